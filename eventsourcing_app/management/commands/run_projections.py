"""`manage.py run_projections`: a worker that keeps async projections caught up, without Celery.

Each cycle gives every projection one batch in turn until none has work left,
then sleeps `--interval`. Any number of these workers (and Celery workers) may
run at once: the checkpoint lease lets one of them apply a projection at a
time, and each runner is kept across cycles, so its owner id stays the same and
its lease is renewed rather than lost and retaken.

SIGTERM or SIGINT lets the batch in flight commit, releases the leases and
exits 0, so a deploy or a Ctrl+C never waits for a lease to expire. Database
errors are logged and the loop goes on after the interval, as
django-celery-beat's scheduler does; each cycle starts with
`close_old_connections()` so a dropped connection is replaced.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError, close_old_connections

from ...models import Checkpoint, CheckpointStatus
from ...projections import ASYNC, Projection, ProjectionRunner, projection_registry
from ._base import WorkerLoopCommand

logger = logging.getLogger("eventsourcing_app.projections")


class Command(WorkerLoopCommand):
    help = (
        "Run async projections from their checkpoints in a loop (a worker without Celery). "
        "SIGTERM/SIGINT finish the current batch, release the leases and exit 0."
    )
    # Collaborators as class attributes, so a subclass can swap them (as django-celery-beat does).
    Runner = ProjectionRunner
    # What the runners run, as the messages name it ("Running projections: …"); `run_sagas` says "sagas".
    noun = "projections"

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        self.add_selection_argument(parser)
        parser.add_argument(
            "--interval", type=float, default=0.5, help="Seconds to sleep when there is no work (default 0.5)."
        )
        parser.add_argument("--once", action="store_true", help="Catch up once, then exit.")
        parser.add_argument(
            "--batch-size", type=int, default=None, help="Events per transaction (default: each one's own batch size)."
        )

    def add_selection_argument(self, parser: CommandParser) -> None:
        """The option choosing what to run (`targets` reads it)."""
        parser.add_argument(
            "--projection",
            action="append",
            dest="projections",
            metavar="NAME",
            help="Run only this async projection (repeatable; default: all of them).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["interval"] < 0 or (options["batch_size"] is not None and options["batch_size"] < 1):
            raise CommandError("--interval must be >= 0 and --batch-size a positive number.")
        runners = [self.Runner(target, batch_size=options["batch_size"]) for target in self.targets(options)]
        with self.stop_on_signals():
            try:
                if options["once"]:
                    self._catch_up_once(runners)
                else:
                    self._loop(runners, interval=options["interval"], verbose=options["verbosity"] >= 2)
            finally:
                for runner in runners:
                    runner.release()

    def targets(self, options: dict[str, Any]) -> list[Projection]:
        """What to run, from the command line: one runner is made for each."""
        return self._projections(options["projections"])

    def _projections(self, names: list[str] | None) -> list[Projection]:
        if not names:
            projections = projection_registry.of_kind(ASYNC)
            if not projections:
                raise CommandError("There are no async projections to run.")
            return projections
        projections = [projection_registry.lookup(name) for name in dict.fromkeys(names)]
        for projection in projections:
            if projection.kind != ASYNC:
                raise CommandError(f"{projection.name!r} is a {projection.kind} projection: only async ones run here.")
        return projections

    def _catch_up_once(self, runners: list[ProjectionRunner]) -> None:
        try:
            passed = self._cycle(runners)
        except DatabaseError as exc:
            raise CommandError(f"Database error: {exc}") from exc
        self.stdout.write(f"Caught up: {passed} log positions passed.")
        self._warn_about_failures(runners)

    def _loop(self, runners: list[ProjectionRunner], *, interval: float, verbose: bool) -> None:
        names = ", ".join(runner.name for runner in runners)
        self.stdout.write(f"Running {self.noun}: {names} (every {interval} s when idle). Stop with Ctrl+C.")
        while not self._stopping:
            close_old_connections()
            try:
                passed = self._cycle(runners)
            except DatabaseError as exc:
                logger.exception("Database gave error: %r", exc)
            else:
                if passed and verbose:
                    self.stdout.write(f"{passed} log positions passed.")
            self.sleep(interval)
        self.stdout.write("Stopped: the leases are released.")

    def _cycle(self, runners: list[ProjectionRunner]) -> int:
        """One batch per projection in turn until none has work (or a stop is asked); positions passed."""
        passed = 0
        busy = list(runners)
        while busy and not self._stopping:
            still_busy = []
            for runner in busy:
                if self._stopping:
                    break
                step = runner.run_batch()
                if step:
                    passed += step
                    still_busy.append(runner)
            busy = still_busy
        return passed

    def _warn_about_failures(self, runners: list[ProjectionRunner]) -> None:
        failed = Checkpoint.objects.filter(
            name__in=[runner.name for runner in runners], status=CheckpointStatus.FAILED
        ).order_by("name")
        for checkpoint in failed:
            self.stderr.write(
                f"{checkpoint.name}: failed at position {checkpoint.failed_position}: {checkpoint.last_error}",
                self.style.WARNING,
            )
