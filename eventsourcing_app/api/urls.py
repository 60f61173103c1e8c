"""URLs of the API; include them under `api/`: `path("api/", include("eventsourcing_app.api.urls"))`.

Each registered command type gets its own path, so the OpenAPI schema shows
its request body and example; a catch-all answers unknown types with a 404
problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.urls import path
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema

from ..commands import command_registry
from ..commands.registry import Registration
from .serializers import CommandResultSerializer, ProblemSerializer
from .views import (
    AnyCommandView,
    CommandView,
    EventListView,
    MetricsView,
    ProjectionListView,
    StreamDetailView,
    StreamEventListView,
    StreamListView,
)

COMMAND_HEADERS = [
    OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, description="Replays return the first result."),
    OpenApiParameter("X-Correlation-ID", str, OpenApiParameter.HEADER, description="Carried by every event."),
    OpenApiParameter("If-Match", int, OpenApiParameter.HEADER, description="The aggregate's expected version."),
]
ERROR_RESPONSES = dict.fromkeys((400, 401, 403, 404, 409, 413, 415, 422, 429), ProblemSerializer)


def command_view(registration: Registration) -> Callable:
    """A view for one command type, whose schema shows that command's body and example."""
    command_class = registration.command_class
    name = command_class.command_type
    examples = [OpenApiExample(name, value=command_class.example)] if command_class.example else []

    @extend_schema(
        operation_id=f"dispatch_{name}",
        summary=f"Dispatch {name}",
        description=(command_class.__doc__ or "").strip(),
        request=command_class.serializer_class,
        responses={200: CommandResultSerializer, **ERROR_RESPONSES},
        parameters=COMMAND_HEADERS,
        examples=examples,
        tags=["commands"],
    )
    def post(self: CommandView, request: Any) -> Any:
        return CommandView.post(self, request)

    view_class = type(f"{name}CommandView", (CommandView,), {"command_type": name, "post": post})
    return view_class.as_view()


def command_patterns() -> list:
    return [
        path(f"commands/{registration.command_class.command_type}/", command_view(registration))
        for registration in command_registry.registrations()
    ]


app_name = "eventsourcing"

urlpatterns = [
    *command_patterns(),
    path("commands/<str:command_type>/", AnyCommandView.as_view(), name="command"),
    path("events/", EventListView.as_view(), name="event-list"),
    path("streams/", StreamListView.as_view(), name="stream-list"),
    path("streams/<str:stream_id>/", StreamDetailView.as_view(), name="stream-detail"),
    path("streams/<str:stream_id>/events/", StreamEventListView.as_view(), name="stream-events"),
    path("metrics/", MetricsView.as_view(), name="metrics"),
    path("projections/", ProjectionListView.as_view(), name="projection-list"),
]
