"""Admin for async projections: checkpoints (with lag) and dead letters, changed only through actions.

A checkpoint's position and lease belong to the runners: editing them by hand
would break the exactly-once guarantee, so the pages are read-only and the
operator acts through the same services the API and management commands use
(`resume`, `pause`, `rebuild`, `retry_dead_letters`). Rebuild runs in the
request, which suits the demo's small logs; large logs are rebuilt with
`manage.py rebuild_projection`.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from ..exceptions import EventSourcingError
from ..models import Checkpoint, CheckpointStatus, ProjectionDeadLetter
from ..projections import ASYNC, pause, projection_registry, rebuild, resume, retry_dead_letters
from ..projections.operations import pending_events
from ..store import EventStore

# Longest last error shown in the list; the detail page shows it whole.
ERROR_PREVIEW = 80


class _ActionsOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete: rows are written by the runners, operators act through actions."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Actions need the model's change permission, though the change form itself is refused."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    def _run_for_each(
        self, request: HttpRequest, names: list[str], operation: Callable[[str], object], done: str
    ) -> None:
        """Apply an operation to each named projection, reporting successes together and failures one by one."""
        succeeded = []
        for name in names:
            try:
                operation(name)
            except EventSourcingError as exc:
                self.message_user(request, f"{name}: {exc}", messages.ERROR)
            else:
                succeeded.append(name)
        if succeeded:
            self.message_user(request, f"{done}: {', '.join(succeeded)}.", messages.SUCCESS)


@admin.register(Checkpoint)
class CheckpointAdmin(_ActionsOnlyAdmin):
    """Each async projection's place in the log, its lag and its last error; resume, pause or rebuild it."""

    list_display = ["name", "status", "position", "lag", "short_error", "lease_owner", "updated_at"]
    list_filter = ["status"]
    fields = [
        "name",
        "status",
        "position",
        "lag",
        "failed_position",
        "last_error",
        "lease_owner",
        "lease_expires_at",
        "updated_at",
    ]
    readonly_fields = fields
    actions = ["resume_selected", "pause_selected", "rebuild_selected"]

    @admin.display(description=_("lag"))
    def lag(self, obj: Checkpoint) -> int | str:
        """Events the projection wants after its position (one indexed count per row: rows are few)."""
        projection = projection_registry.get(obj.name)
        if projection is None or projection.kind != ASYNC:
            return "-"
        return pending_events(projection, obj.position, EventStore())

    @admin.display(description=_("last error"))
    def short_error(self, obj: Checkpoint) -> str:
        error = " ".join(obj.last_error.split())
        return error if len(error) <= ERROR_PREVIEW else error[: ERROR_PREVIEW - 1] + "…"

    @admin.action(permissions=["operate"], description=_("Resume selected projections"))
    def resume_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._run_for_each(request, _names(queryset), resume, "Resumed")

    @admin.action(permissions=["operate"], description=_("Pause selected projections"))
    def pause_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._run_for_each(request, _names(queryset), pause, "Paused")

    @admin.action(permissions=["operate"], description=_("Rebuild selected projections (clear and replay the log)"))
    def rebuild_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        for name in _names(queryset):
            try:
                replayed = rebuild(name)
            except EventSourcingError as exc:
                self.message_user(request, f"{name}: {exc}", messages.ERROR)
                continue
            checkpoint = Checkpoint.objects.get(name=name)
            if checkpoint.status == CheckpointStatus.FAILED:
                self.message_user(
                    request,
                    f"{name}: stopped at position {checkpoint.failed_position}: {checkpoint.last_error}",
                    messages.ERROR,
                )
            else:
                self.message_user(request, f"{name}: rebuilt, {replayed} events replayed.", messages.SUCCESS)


@admin.register(ProjectionDeadLetter)
class ProjectionDeadLetterAdmin(_ActionsOnlyAdmin):
    """Events a skip-policy projection could not apply; "Retry" applies them again after a fix."""

    list_display = ["projection", "position", "event_type", "short_error", "created_at", "retried_at"]
    list_filter = ["projection", ("retried_at", admin.EmptyFieldListFilter)]
    fields = ["projection", "position", "event_id", "event_type", "error", "created_at", "retried_at"]
    readonly_fields = fields
    actions = ["retry_selected"]

    @admin.display(description=_("error"))
    def short_error(self, obj: ProjectionDeadLetter) -> str:
        error = " ".join(obj.error.split())
        return error if len(error) <= ERROR_PREVIEW else error[: ERROR_PREVIEW - 1] + "…"

    @admin.action(permissions=["operate"], description=_("Retry the dead letters of the selected projections"))
    def retry_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        for name in sorted(set(queryset.values_list("projection", flat=True))):
            try:
                applied, failing = retry_dead_letters(name)
            except EventSourcingError as exc:
                self.message_user(request, f"{name}: {exc}", messages.ERROR)
                continue
            level = messages.WARNING if failing else messages.SUCCESS
            self.message_user(request, f"{name}: {applied} applied, {failing} still failing.", level)


def _names(queryset: QuerySet) -> list[str]:
    return list(queryset.order_by("name").values_list("name", flat=True))
