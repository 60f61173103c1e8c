"""`manage.py rebuild_projection NAME | --all`: clear a read model and replay the whole log into it."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandError, CommandParser

from ...models import Checkpoint, CheckpointStatus
from ...projections import ASYNC, projection_registry, rebuild
from ._base import EventSourcingCommand


class Command(EventSourcingCommand):
    help = (
        "Clear an async projection's read model and replay the whole event log into it, with a progress bar "
        "on a terminal. Writers may keep appending meanwhile: the replay runs on to the head. The read model "
        "is emptied first, so the command asks for confirmation on a terminal; elsewhere (scripts, CI) it "
        "refuses unless --yes is given. Exits non-zero for an unknown name (listing the known ones) and when "
        "a projection stops on a poison event."
    )
    shows_progress = True

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("names", nargs="*", metavar="NAME", help="Projections to rebuild.")
        parser.add_argument("--all", action="store_true", help="Rebuild every async projection.")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Events per transaction (default: PROJECTION_REBUILD_BATCH_SIZE, 2000).",
        )
        parser.add_argument(
            "--yes",
            "-y",
            "--no-input",
            "--noinput",
            dest="yes",
            action="store_true",
            help="Do not ask for confirmation (needed when stdin is not a terminal).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        selected = self._selected(options["names"], every=options["all"])
        if not selected:
            self.stdout.write("There are no async projections to rebuild.")
            return
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be a positive number.")
        if not options["yes"]:
            self._confirm(selected)
        failures = [name for name in selected if not self._rebuild(name, options["batch_size"])]
        if failures:
            raise CommandError(f"Stopped on a poison event: {', '.join(failures)}. Fix it, then rebuild again.")

    def _selected(self, names: list[str], *, every: bool) -> list[str]:
        if every == bool(names):
            raise CommandError("Name the projections to rebuild, or give --all (not both).")
        if every:
            return [projection.name for projection in projection_registry.of_kind(ASYNC)]
        for name in names:
            if projection_registry.lookup(name).kind != ASYNC:
                raise CommandError(f"{name!r} is not an async projection: only async projections are rebuilt.")
        return list(dict.fromkeys(names))

    def _confirm(self, names: list[str]) -> None:
        question = f"This empties and replays the read model of {', '.join(names)}. Continue?"
        if not self.confirm(question):
            raise CommandError("Not confirmed: nothing was rebuilt. Pass --yes to rebuild without asking.")

    def _rebuild(self, name: str, batch_size: int | None) -> bool:
        """Rebuild one projection and report it; False when it stopped on a poison event."""
        started = time.monotonic()
        with self.progress(description=name) as progress:
            replayed = rebuild(name, batch_size=batch_size, progress=progress)
        seconds = max(time.monotonic() - started, 1e-6)
        checkpoint = Checkpoint.objects.get(name=name)
        if checkpoint.status == CheckpointStatus.FAILED:
            self.stderr.write(
                f"{name}: failed at position {checkpoint.failed_position}: {checkpoint.last_error}",
                self.style.ERROR,
            )
            return False
        self.stdout.write(
            f"{name}: {replayed} events replayed in {seconds:.2f} s ({replayed / seconds:,.0f} events/s); "
            f"now at position {checkpoint.position}.",
            self.style.SUCCESS,
        )
        return True
