"""`manage.py run_sagas`: a worker that moves sagas on and fires their timeouts, without Celery.

It is `run_projections` over the saga managers (a saga manager runs like an
async projection, from its checkpoint `saga:<Name>`, under a lease), so it has
the same loop, options and guarantees: each batch of events, the commands the
saga dispatches for them and the checkpoint's advance commit together; any
number of these workers (and Celery workers) may run at once; SIGTERM or
SIGINT lets the batch in flight commit, releases the leases and exits 0.

Each cycle first catches the sagas up with the log, then fires the timeouts
that are due, so an event already in the log (a payment authorised just in
time) is handled before the deadline it beat. When timeouts fired, the cycle
catches up once more with the events their compensations appended.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from ...projections import ProjectionRunner
from ...sagas import SagaManager, saga_registry
from . import run_projections

logger = logging.getLogger("eventsourcing_app.sagas")

# Timeouts fired per query while a cycle drains the due ones.
TIMEOUTS_PER_ROUND = 100


class Command(run_projections.Command):
    help = (
        "Run sagas from their checkpoints in a loop and fire their due timeouts (a worker without Celery). "
        "SIGTERM/SIGINT finish the current batch, release the leases and exit 0."
    )
    noun = "sagas"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeouts_fired = 0
        self.timeout_failures: dict[str, str] = {}  # checkpoint name → the last error, reported by --once

    def add_selection_argument(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--saga",
            action="append",
            dest="sagas",
            metavar="NAME",
            help="Run only this saga (repeatable; default: all of them).",
        )

    def targets(self, options: dict[str, Any]) -> list[SagaManager]:  # type: ignore[override]
        names = options["sagas"]
        if not names:
            if not saga_registry.names():
                raise CommandError("There are no sagas to run: no installed app registers one in its sagas.py.")
            return saga_registry.managers()
        return [saga_registry.manager(name) for name in dict.fromkeys(names)]

    def _catch_up_once(self, runners: list[ProjectionRunner]) -> None:
        super()._catch_up_once(runners)
        self.stdout.write(f"Timeouts fired: {self.timeouts_fired}.")
        for name, error in sorted(self.timeout_failures.items()):
            self.stderr.write(f"{name}: a timeout failed: {error}", self.style.WARNING)

    def _cycle(self, runners: list[ProjectionRunner]) -> int:
        """Catch up, fire the due timeouts, and catch up with what they appended; log positions passed."""
        passed = super()._cycle(runners)
        if self._fire_timeouts(runners):
            passed += super()._cycle(runners)
        return passed

    def _fire_timeouts(self, runners: list[ProjectionRunner]) -> int:
        """Fire each saga's due timeouts; one whose `on_timeout` raises is reported and does not stop the others."""
        fired = 0
        for runner in runners:
            manager: SagaManager = runner.projection  # type: ignore[assignment]
            try:
                fired += self._drain_timeouts(manager)
            except DatabaseError:
                raise  # the loop logs it and tries again after the interval
            except Exception as exc:
                logger.exception("run_sagas: a timeout of %s failed", manager.saga.name)
                self.timeout_failures[manager.name] = repr(exc)
        if fired:
            logger.info("run_sagas: %s timeouts fired", fired)
        self.timeouts_fired += fired
        return fired

    def _drain_timeouts(self, manager: SagaManager) -> int:
        fired = 0
        while not self._stopping:
            count = manager.fire_timeouts(limit=TIMEOUTS_PER_ROUND)
            fired += count
            if count < TIMEOUTS_PER_ROUND:
                break
        return fired
