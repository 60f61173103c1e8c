"""Representations of events, streams and command results for the read API."""

from __future__ import annotations

from rest_framework import serializers

from ..models import Event, Stream


class EventSerializer(serializers.ModelSerializer):
    stream_id = serializers.CharField(read_only=True)

    class Meta:
        model = Event
        fields = [
            "position",
            "event_id",
            "stream_id",
            "version",
            "event_type",
            "schema_version",
            "data",
            "metadata",
            "recorded_at",
        ]
        read_only_fields = fields


class StreamSerializer(serializers.ModelSerializer):
    class Meta:
        model = Stream
        fields = ["stream_id", "category", "version", "created_at", "updated_at"]
        read_only_fields = fields


class AppendedEventSerializer(serializers.Serializer):
    position = serializers.IntegerField()
    event_type = serializers.CharField()
    version = serializers.IntegerField()


class CommandResultSerializer(serializers.Serializer):
    """The body of a successful command (for the OpenAPI schema)."""

    aggregate_id = serializers.CharField(allow_null=True)
    stream_id = serializers.CharField(allow_null=True)
    version = serializers.IntegerField(allow_null=True)
    events = AppendedEventSerializer(many=True)
    correlation_id = serializers.CharField()


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem details (for the OpenAPI schema)."""

    type = serializers.CharField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField(required=False)
    code = serializers.CharField(required=False)
    errors = serializers.DictField(required=False)
