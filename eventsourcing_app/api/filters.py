"""Query filters of the event list (django-filter): exact matches that use the event table's indexes."""

from __future__ import annotations

import django_filters

from ..models import Event


class EventFilter(django_filters.FilterSet):
    event_type = django_filters.CharFilter(field_name="event_type")
    stream_id = django_filters.CharFilter(field_name="stream_id")
    category = django_filters.CharFilter(field_name="category")
    # metadata->'correlation_id' = '"value"': the form the expression index was built on.
    correlation_id = django_filters.CharFilter(field_name="metadata__correlation_id")
    after = django_filters.NumberFilter(field_name="position", lookup_expr="gt", min_value=0)

    class Meta:
        model = Event
        fields = ["event_type", "stream_id", "category", "correlation_id", "after"]
