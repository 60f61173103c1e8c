"""`manage.py eventsourcing_status`: how far behind the background work is, for operators and scripts.

The report is a list of sections, each built by one function listed in
`Command.sections`: the async projections now; the outbox and the sagas add
theirs the same way. A section is a table (printed as text or, with `--json`,
as a list of objects under the section's name) plus the problems it found.
Any problem makes the command exit 1 after printing the report, so a script or
a health check can rely on the exit code alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder

from ...models import CheckpointStatus, SagaStatus
from ...outbox import outbox_stats
from ...projections import projection_statuses
from ...sagas.operations import saga_reports
from ...testing import NotCaughtUpError, wait_until_caught_up
from ._base import EventSourcingCommand

# Longest last error shown in the text table; --json gives it whole.
ERROR_WIDTH = 60


@dataclass(frozen=True)
class Section:
    """One part of the report: a titled table of rows, and the problems found in it."""

    name: str
    title: str
    columns: Sequence[str]
    rows: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)


def projections_section() -> Section:
    """Every async projection's position, lag, dead letters and error; failed ones are problems."""
    statuses = projection_statuses()
    rows = [
        {
            "name": status.name,
            "status": status.status,
            "position": status.position,
            "head": status.head,
            "lag": status.lag,
            "dead_letters": status.dead_letters,
            "last_error": status.last_error,
            "failed_position": status.failed_position,
            "updated_at": status.updated_at,
        }
        for status in statuses
    ]
    problems = [
        f"Projection {status.name} failed at position {status.failed_position}: {status.last_error}"
        for status in statuses
        if status.status == CheckpointStatus.FAILED
    ]
    columns = ("name", "status", "position", "lag", "dead_letters", "failed_position", "last_error")
    return Section("projections", "Async projections", columns, rows, problems)


class _InstanceCounts(dict):
    """Instances by status: a whole object in JSON, the non-zero counts in the text table."""

    def __str__(self) -> str:
        return ", ".join(f"{n} {status}" for status, n in self.items() if n) or "none"


def outbox_section() -> Section:
    """Outbox messages per destination by status, and the age of the oldest undelivered one.

    Dead letters and pending messages of a destination that is no longer configured are
    problems: neither is delivered without an operator.
    """
    stats = outbox_stats()
    rows = [
        {
            "destination": dest.destination,
            "configured": dest.configured,
            "pending": dest.pending,
            "delivered": dest.delivered,
            "dead": dest.dead,
            "discarded": dest.discarded,
            "oldest_pending_age": None if dest.oldest_pending_age is None else round(dest.oldest_pending_age, 1),
        }
        for dest in stats.destinations
    ]
    problems = [
        f"Outbox destination {dest.destination}: {dest.dead} dead letter(s) (requeue or discard them in the admin)"
        for dest in stats.destinations
        if dest.dead
    ]
    problems += [
        f"Outbox destination {dest.destination} is not configured: {dest.pending} pending message(s) wait for it"
        for dest in stats.destinations
        if dest.pending and not dest.configured
    ]
    columns = ("destination", "pending", "delivered", "dead", "discarded", "oldest_pending_age")
    return Section("outbox", "Outbox", columns, rows, problems)


def sagas_section() -> Section:
    """Each saga's manager (position, lag, status, error) and its instances by status.

    A stopped manager and instances left `compensation_failed` are problems: both wait for an operator.
    """
    reports = saga_reports()
    rows = [
        {
            "name": report.name,
            "checkpoint": report.checkpoint,
            "status": report.status,
            "position": report.position,
            "head": report.head,
            "lag": report.lag,
            "instances": _InstanceCounts(report.instances),
            "last_error": report.last_error,
            "failed_position": report.failed_position,
            "updated_at": report.updated_at,
        }
        for report in reports
    ]
    problems = [
        f"Saga {report.name} stopped at position {report.failed_position}: {report.last_error}"
        for report in reports
        if report.status == CheckpointStatus.FAILED
    ]
    problems += [
        f"Saga {report.name}: {n} instance(s) in compensation_failed (retry them from the admin after a fix)"
        for report in reports
        if (n := report.instances[SagaStatus.COMPENSATION_FAILED])
    ]
    columns = ("name", "status", "position", "lag", "instances", "last_error")
    return Section("sagas", "Sagas", columns, rows, problems)


class Command(EventSourcingCommand):
    help = (
        "Show the async projections (status, position, lag, dead letters, last error), the outbox (messages "
        "by status per destination, the oldest pending) and the sagas (each manager's status and lag, "
        "instances by status). Exits 1 if any has failed or holds dead letters. --wait blocks until every "
        "projection has lag 0 (exit 1 after --timeout); it only watches, unless --run is given, which "
        "applies the pending events in this process (for setups without workers)."
    )
    sections: Sequence[Callable[[], Section]] = (projections_section, outbox_section, sagas_section)

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
        parser.add_argument("--wait", action="store_true", help="Wait until every async projection has lag 0.")
        parser.add_argument(
            "--timeout", type=float, default=60.0, help="Seconds --wait waits before exiting 1 (default 60)."
        )
        parser.add_argument(
            "--run", action="store_true", help="While waiting, apply pending events in this process (implies --wait)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["timeout"] < 0:
            raise CommandError("--timeout must be >= 0.")
        waited = None
        if options["wait"] or options["run"]:
            waited = self._wait(options["timeout"], run=options["run"])
        sections = [build() for build in self.sections]
        self.stdout.write(self._as_json(sections) if options["json"] else self._as_text(sections))
        problems = [problem for section in sections for problem in section.problems]
        if waited:
            problems.insert(0, waited)
        if problems:
            raise CommandError("\n".join(problems))

    def _wait(self, timeout: float, *, run: bool) -> str | None:
        """Wait for the projections; why it gave up on time, if it did (reported after the tables).

        A failed projection also ends the wait, but the projections section reports that itself.
        """
        try:
            wait_until_caught_up(timeout, run=run)
        except NotCaughtUpError as exc:
            if any(status.status == CheckpointStatus.FAILED for status in exc.statuses):
                return None
            return str(exc)
        return None

    def _as_json(self, sections: list[Section]) -> str:
        report: dict[str, Any] = {section.name: section.rows for section in sections}
        report["problems"] = [problem for section in sections for problem in section.problems]
        return json.dumps(report, cls=DjangoJSONEncoder, indent=2)

    def _as_text(self, sections: list[Section]) -> str:
        return "\n\n".join(_table(section) for section in sections)


def _table(section: Section) -> str:
    """A plain, aligned text table under the section's title."""
    if not section.rows:
        return f"{section.title}: none."
    cells = [[_cell(row[column]) for column in section.columns] for row in section.rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(section.columns)]
    lines = [
        "  ".join(column.ljust(width) for column, width in zip(section.columns, widths, strict=True)),
        "  ".join("-" * width for width in widths),
        *("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells),
    ]
    return f"{section.title}:\n" + "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = " ".join(str(value).split())
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…"
