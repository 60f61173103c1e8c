"""Admin for sagas: each instance with its step history, the saga managers' checkpoints, and two repair actions.

A saga's state belongs to its manager: editing a status, a step or the
processed event ids by hand would break its guarantees (an event handled twice,
a compensation skipped), so the pages are read-only. Operators act through the
services in `sagas.operations`, which lock the row and go through the manager:
"Retry compensation" re-runs what is left to undo of a `compensation_failed`
saga (once its cause is fixed), and "Fire timeout now" runs a waiting saga's
`on_timeout` without waiting for its deadline. Both need the change permission.

The changelist starts with each saga manager's checkpoint (`saga:<Name>`): its
position, lag and last error, and its instances by status, with a Resume
button for a manager that stopped on a poison event (change permission too).
The checkpoints are also listed with the projections' (a manager runs as one).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.loader import render_to_string
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..exceptions import EventSourcingError
from ..models import Checkpoint, CheckpointStatus, SagaState, SagaStatus
from ..sagas.base import ACTIVE_STATUSES
from ..sagas.operations import SagaReport, fire_timeout_now, resume_saga, retry_compensation, saga_reports
from .projections import _ActionsOnlyAdmin
from .store import _pretty_json

# History details shown in their own columns; any other key of an entry is listed under "outcome".
_HISTORY_COLUMNS = {"at", "kind", "step", "command_type", "event_type", "event_id", "position", "events"}


class DeadlineFilter(admin.SimpleListFilter):
    """Sagas waiting on a deadline, and those whose deadline has passed without their timeout firing yet."""

    title = _("deadline")
    parameter_name = "deadline"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("set", _("has a deadline")), ("overdue", _("overdue")), ("none", _("no deadline"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == "set":
            return queryset.filter(deadline__isnull=False)
        if value == "overdue":
            return queryset.filter(deadline__lte=timezone.now(), status__in=ACTIVE_STATUSES)
        if value == "none":
            return queryset.filter(deadline__isnull=True)
        return queryset


class _SagaChangeList(ChangeList):
    """Leaves the JSON columns out of the list query: the list does not show them and a history grows long."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: list[str] | None = None) -> QuerySet:
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .defer("data", "processed_event_ids", "compensations", "history")
        )


@admin.register(SagaState)
class SagaStateAdmin(_ActionsOnlyAdmin):
    """Saga instances, newest first; the detail page tells the instance's story step by step."""

    change_list_template = "eventsourcing_app/admin/sagastate_change_list.html"
    list_display = [
        "saga_type",
        "correlation_id",
        "status",
        "current_step",
        "started_at",
        "updated_at",
        "completed_at",
        "deadline",
        "version",
    ]
    list_display_links = ["correlation_id"]
    list_filter = ["status", "saga_type", DeadlineFilter]
    search_fields = ["correlation_id__startswith"]
    search_help_text = _("Correlation id, or the start of one.")
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "saga_type",
                    "correlation_id",
                    "status",
                    "current_step",
                    "tenant_id",
                    "version",
                    "started_at",
                    "updated_at",
                    "completed_at",
                    "deadline",
                    "last_error",
                ]
            },
        ),
        (_("History"), {"fields": ["history_table"]}),
        (_("State"), {"fields": ["pretty_data", "compensations_table", "processed_events"]}),
    ]
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]
    actions = ["retry_compensation_selected", "fire_timeout_selected"]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _SagaChangeList

    def get_urls(self) -> list[URLPattern]:
        resume = path(
            "resume-manager/<str:saga_name>/",
            self.admin_site.admin_view(self.resume_manager_view),
            name="eventsourcing_app_sagastate_resume_manager",
        )
        return [resume, *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The list, under a table of the saga managers (one row per registered saga)."""
        reports = saga_reports()
        stored = set(Checkpoint.objects.filter(name__in=[r.checkpoint for r in reports]).values_list("name", flat=True))
        managers = [_manager_row(report, stored=report.checkpoint in stored) for report in reports]
        context = {"saga_managers": managers, "can_operate": self.has_operate_permission(request)}
        return super().changelist_view(request, {**(extra_context or {}), **context})

    def resume_manager_view(self, request: HttpRequest, saga_name: str) -> HttpResponse:
        """POST: a stopped saga manager runs again from its checkpoint (the button in the managers table)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_operate_permission(request):
            raise PermissionDenied
        try:
            resume_saga(saga_name)
        except EventSourcingError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(request, _("Resumed: %(name)s.") % {"name": saga_name}, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:eventsourcing_app_sagastate_changelist"))

    # ------------------------------------------------------------------ detail
    @admin.display(description=_("step history"))
    def history_table(self, obj: SagaState) -> SafeString:
        rows = [_history_row(entry) for entry in obj.history]
        headers = [_("time"), _("kind"), _("step"), _("command"), _("event"), _("outcome / error")]
        return _table(headers, rows, empty=_("Nothing handled yet."))

    @admin.display(description=_("data"))
    def pretty_data(self, obj: SagaState) -> SafeString:
        return _pretty_json(obj.data)

    @admin.display(description=_("compensations left"))
    def compensations_table(self, obj: SagaState) -> SafeString:
        """Newest last: they run from the bottom up."""
        rows = [
            [
                entry.get("step", ""),
                entry.get("command_type") or f"{entry.get('method', '')}()",
                json.dumps(entry["data"], sort_keys=True, ensure_ascii=False) if "data" in entry else "",
            ]
            for entry in obj.compensations
        ]
        return _table([_("step"), _("command or method"), _("data")], rows, empty=_("None."))

    @admin.display(description=_("processed events"))
    def processed_events(self, obj: SagaState) -> int:
        return len(obj.processed_event_ids)

    # ------------------------------------------------------------------ actions
    @admin.action(permissions=["operate"], description=_("Retry compensation (compensation failed sagas)"))
    def retry_compensation_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        try:
            retried = retry_compensation(ids, actor=request.user.get_username())
        except EventSourcingError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        failing = SagaState.objects.filter(pk__in=ids, status=SagaStatus.COMPENSATION_FAILED).count()
        message = ngettext(
            "Compensation retried for %(n)d saga: %(done)d compensated, %(failing)d still failing.",
            "Compensation retried for %(n)d sagas: %(done)d compensated, %(failing)d still failing.",
            retried,
        ) % {"n": retried, "done": retried - failing, "failing": failing}
        self.message_user(request, message, messages.WARNING if failing else messages.SUCCESS)
        self._report_skipped(request, len(ids) - retried, _("only compensation failed sagas are retried"))

    @admin.action(permissions=["operate"], description=_("Fire timeout now (running sagas with a deadline)"))
    def fire_timeout_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        try:
            fired = fire_timeout_now(ids, actor=request.user.get_username())
        except EventSourcingError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        message = ngettext("Timeout fired for %(n)d saga.", "Timeout fired for %(n)d sagas.", fired) % {"n": fired}
        self.message_user(request, message, messages.SUCCESS)
        self._report_skipped(request, len(ids) - fired, _("only running sagas with a deadline have one to fire"))

    def _report_skipped(self, request: HttpRequest, skipped: int, why: str) -> None:
        if skipped:
            message = ngettext("%(n)d selected saga was skipped", "%(n)d selected sagas were skipped", skipped) % {
                "n": skipped
            }
            self.message_user(request, f"{message}: {why}.", messages.WARNING)


def _manager_row(report: SagaReport, *, stored: bool) -> dict[str, Any]:
    """A saga manager as the changelist's template shows it, with links to its checkpoint and its instances."""
    checkpoint_url = None
    if stored:  # a manager that never ran has no checkpoint row yet
        checkpoint_url = reverse("admin:eventsourcing_app_checkpoint_change", args=[quote(report.checkpoint)])
    instances_url = f"{reverse('admin:eventsourcing_app_sagastate_changelist')}?{urlencode({'saga_type': report.name})}"
    return {
        "report": report,
        "checkpoint_url": checkpoint_url,
        "instances_url": instances_url,
        "resume_url": reverse("admin:eventsourcing_app_sagastate_resume_manager", args=[report.name])
        if report.status in (CheckpointStatus.FAILED, CheckpointStatus.PAUSED)
        else None,
        "instances": [(status.label, n) for status in SagaStatus if (n := report.instances.get(status.value, 0))],
    }


def _history_row(entry: dict[str, Any]) -> list[Any]:
    """One history entry as table cells: when, what kind, which step and command, which event, what came of it."""
    return [
        _when(entry.get("at")),
        entry.get("kind", ""),
        entry.get("step", ""),
        entry.get("command_type") or "",
        _events(entry),
        "; ".join(f"{key}: {value}" for key, value in entry.items() if key not in _HISTORY_COLUMNS and value != ""),
    ]


def _when(at: object) -> str:
    try:
        moment = datetime.fromisoformat(str(at))
    except ValueError:
        return str(at or "")
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _events(entry: dict[str, Any]) -> SafeString:
    """The event an entry handled, or those its command appended ("StockReserved @ 12"), linked to the log."""
    if entry.get("event_type"):
        return _event_link(entry["event_type"], entry.get("position"))
    appended = entry.get("events") or []
    return format_html_join(", ", "{}", ((_event_link(e.get("event_type"), e.get("position")),) for e in appended))


def _event_link(event_type: object, position: object) -> SafeString:
    if not isinstance(position, int):
        return format_html("{}", event_type)
    url = reverse("admin:eventsourcing_app_event_change", args=[position])
    return format_html('<a href="{}">{} @ {}</a>', url, event_type, position)


def _table(headers: list[Any], rows: list[list[Any]], *, empty: Any) -> SafeString:
    """A small read-only table (the template escapes every cell: stored data cannot inject markup)."""
    if not rows:
        return format_html("<p>{}</p>", empty)
    return render_to_string("eventsourcing_app/admin/saga_table.html", {"headers": headers, "rows": rows})
