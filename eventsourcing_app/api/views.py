"""The HTTP API: dispatch commands, and read streams and events (staff only)."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rest_framework import generics, serializers
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ..commands import CommandContext, command_registry, dispatch
from ..commands.middleware.tenant import tenant_of_user
from ..conf import es_settings
from ..exceptions import CommandPermissionError, CommandValidationError
from ..models import Event, Stream
from ..outbox import metrics as outbox_metrics  # noqa: F401  (registers the outbox's metrics before the first scrape)
from ..projections import projection_statuses
from ..store import EventStore
from . import problems
from .filters import EventFilter
from .pagination import PositionCursorPagination, StreamCursorPagination
from .permissions import CanDispatchCommand, IsStaff
from .serializers import EventSerializer, StreamSerializer
from .throttling import CommandRateThrottle

MAX_HEADER_ID_LENGTH = 255


class ProblemDetailsMixin:
    """Every error of these views is answered as problem+json."""

    def get_exception_handler(self) -> Any:
        return problems.exception_handler


class CommandView(ProblemDetailsMixin, APIView):
    """`POST /api/commands/<CommandType>/`: validate, authorise and dispatch one command."""

    parser_classes = [JSONParser]
    permission_classes = [IsAuthenticated]
    throttle_classes = [CommandRateThrottle]
    command_type: str | None = None

    def post(self, request: Request, command_type: str | None = None) -> Response:
        command_type = command_type or self.command_type
        if _content_length(request) > es_settings.MAX_COMMAND_BODY_BYTES:
            raise problems.PayloadTooLarge(f"The body exceeds {es_settings.MAX_COMMAND_BODY_BYTES} bytes.")
        registration = command_registry.lookup(command_type)
        if not CanDispatchCommand().has_permission(request, self):
            raise CommandPermissionError(
                f"You need the permission eventsourcing_app.{registration.permission_codename}."
            )
        context = self._context(request)
        command = registration.command_class.from_data(request.data)
        result = dispatch(command, context)
        response = Response(result.to_dict(), status=200)
        if result.version is not None:
            response["ETag"] = str(result.version)
        response["X-Correlation-ID"] = result.correlation_id
        if result.replayed:
            response["Idempotent-Replayed"] = "true"
        return response

    def _context(self, request: Request) -> CommandContext:
        headers = request.headers
        return CommandContext(
            user=request.user,
            correlation_id=_header_id(headers, "X-Correlation-ID"),
            tenant_id=_header_id(headers, es_settings.TENANT_HEADER),
            idempotency_key=_header_id(headers, "Idempotency-Key"),
            expected_version=_if_match(headers.get("If-Match")),
        )


@extend_schema(exclude=True)
class AnyCommandView(CommandView):
    """The catch-all of /api/commands/<type>/: unknown types get a 404 problem."""


def _content_length(request: Request) -> int:
    try:
        return max(int(request.META.get("CONTENT_LENGTH") or 0), 0)
    except ValueError:
        raise CommandValidationError({"Content-Length": ["Not a number."]}) from None


def _header_id(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_HEADER_ID_LENGTH or not value.isprintable():
        raise CommandValidationError({name: [f"At most {MAX_HEADER_ID_LENGTH} printable characters."]})
    return value


def _if_match(value: str | None) -> int | None:
    """`If-Match: 3` (or `"3"`, `W/"3"`): the version the aggregate must be at."""
    if value is None or value.strip() == "":
        return None
    bare = value.strip().removeprefix("W/").strip('"')
    if not bare.isdigit():
        raise CommandValidationError({"If-Match": ["Expected the aggregate's version, a non-negative integer."]})
    return int(bare)


class TenantScopedMixin:
    """Staff bound to a tenant (TENANT_RESOLVER) see only that tenant's streams and events."""

    def scope(self, queryset: Any) -> Any:
        tenant = tenant_of_user(self.request.user)  # type: ignore[attr-defined]
        return queryset if tenant is None else queryset.filter(tenant_id=tenant)


class EventListView(ProblemDetailsMixin, TenantScopedMixin, generics.ListAPIView):
    """`GET /api/events/`: the global log, ascending by position, with exact-match filters."""

    serializer_class = EventSerializer
    permission_classes = [IsStaff]
    pagination_class = PositionCursorPagination
    filter_backends = [DjangoFilterBackend]
    filterset_class = EventFilter

    def get_queryset(self) -> Any:
        # Up to the head only: a client following the log by cursor must never pass an event still committing.
        return self.scope(Event.objects.filter(position__lte=EventStore().head_position()))


class StreamListView(ProblemDetailsMixin, TenantScopedMixin, generics.ListAPIView):
    """`GET /api/streams/`: streams by id, filterable by category."""

    serializer_class = StreamSerializer
    permission_classes = [IsStaff]
    pagination_class = StreamCursorPagination
    filter_backends = [DjangoFilterBackend]
    filterset_fields = ["category"]

    def get_queryset(self) -> Any:
        return self.scope(Stream.objects.all())


class StreamDetailView(ProblemDetailsMixin, TenantScopedMixin, generics.RetrieveAPIView):
    """`GET /api/streams/<stream_id>/`: a stream's version and timestamps."""

    serializer_class = StreamSerializer
    permission_classes = [IsStaff]
    lookup_field = "stream_id"

    def get_queryset(self) -> Any:
        return self.scope(Stream.objects.all())


class StreamEventListView(ProblemDetailsMixin, TenantScopedMixin, generics.ListAPIView):
    """`GET /api/streams/<stream_id>/events/`: one stream's events, in order."""

    serializer_class = EventSerializer
    permission_classes = [IsStaff]
    pagination_class = PositionCursorPagination

    def get_queryset(self) -> Any:
        stream = get_object_or_404(self.scope(Stream.objects.all()), stream_id=self.kwargs["stream_id"])
        return Event.objects.filter(stream=stream)


class MetricsView(ProblemDetailsMixin, APIView):
    """`GET /api/metrics/`: Prometheus metrics (commands, outbox deliveries and backlog), staff only."""

    permission_classes = [IsStaff]

    @extend_schema(exclude=True)
    def get(self, request: Request) -> HttpResponse:
        return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


class ProjectionStatusSerializer(serializers.Serializer):
    """One async projection as operators see it (a `projections.ProjectionStatus`)."""

    name = serializers.CharField()
    status = serializers.CharField()
    position = serializers.IntegerField()
    head = serializers.IntegerField()
    lag = serializers.IntegerField(help_text="Events it wants after its position.")
    last_error = serializers.CharField()
    failed_position = serializers.IntegerField(allow_null=True)
    dead_letters = serializers.IntegerField(help_text="Skipped events not retried yet.")
    updated_at = serializers.DateTimeField(allow_null=True)


class ProjectionListView(ProblemDetailsMixin, APIView):
    """`GET /api/projections/`: every async projection's status, position, lag and last error (staff only)."""

    permission_classes = [IsStaff]

    @extend_schema(responses=ProjectionStatusSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(ProjectionStatusSerializer(projection_statuses(), many=True).data)
