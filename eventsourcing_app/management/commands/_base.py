"""What the app's management commands share: app errors as `CommandError`, and an optional progress bar.

Management commands are the one place that turns `EventSourcingError`s into
`CommandError`s (exceptions.py): `manage.py` then prints the message and exits
non-zero without a traceback, and `call_command` raises it for scripts and tests.

A progress bar (tqdm: count, events/s and ETA) is shown only on a terminal and
never under `--no-progress`, so logs and pipes stay clean.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from ...exceptions import EventSourcingError

ProgressCallback = Callable[[int, int], None]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Longest nap between checks of the stop flag while a worker loop is idle.
SLEEP_SLICE = 0.05

logger = logging.getLogger("eventsourcing_app")


class EventSourcingCommand(BaseCommand):
    """Base of the app's commands. Subclasses call `super().add_arguments(parser)` to get `--no-progress`.

    Attributes:
        shows_progress: whether the command has long work worth a progress bar (adds `--no-progress`).
    """

    shows_progress = False
    _progress_wanted = False

    def add_arguments(self, parser: CommandParser) -> None:
        if self.shows_progress:
            parser.add_argument(
                "--no-progress",
                action="store_true",
                help="Do not show a progress bar (it is only shown when stdout is a terminal anyway).",
            )

    def execute(self, *args: Any, **options: Any) -> str | None:
        """Run the command; the app's errors become CommandError (a message and exit 1, no traceback)."""
        self._progress_wanted = self.shows_progress and not options.get("no_progress", False)
        try:
            return super().execute(*args, **options)
        except EventSourcingError as exc:
            raise CommandError(str(exc)) from exc

    @contextmanager
    def progress(self, *, description: str) -> Iterator[ProgressCallback]:
        """A callback `update(done, total)` drawing a progress bar, or doing nothing when there is no terminal."""
        if not (self._progress_wanted and self.stdout.isatty()):
            yield _ignore_progress
            return
        # The wrapped stream itself: OutputWrapper.write() would end each of tqdm's "\r" redraws with a newline.
        bar = tqdm(desc=description, unit="events", file=self.stdout._out, dynamic_ncols=True)

        def update(done: int, total: int) -> None:
            bar.total = max(total, done)
            bar.update(done - bar.n)

        try:
            yield update
        finally:
            bar.close()

    def confirm(self, question: str) -> bool:
        """Ask a yes/no question on the terminal; False when stdin is not a terminal (nobody can answer)."""
        if not _stdin_is_terminal():
            return False
        answer = input(f"{question} [y/N] ")
        return answer.strip().lower() in {"y", "yes"}


class WorkerLoopCommand(EventSourcingCommand):
    """Base of the worker loops (run_projections, run_sagas, process_outbox): a graceful stop on signals.

    SIGTERM and SIGINT set `_stopping`, which the loop checks between batches, so the batch in
    flight commits and leases are released before the command exits 0.
    """

    _stopping = False

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """Turn SIGTERM/SIGINT into the stop flag; the previous handlers come back after."""
        self._stopping = False
        name = type(self).__module__.rsplit(".", 1)[-1]

        def ask_to_stop(signum: int, frame: FrameType | None) -> None:
            logger.info("%s: %s received, stopping after the current batch", name, signal.Signals(signum).name)
            self._stopping = True

        previous = {signum: signal.signal(signum, ask_to_stop) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def sleep(self, seconds: float) -> None:
        """Sleep in short slices, so that a stop signal is answered at once."""
        deadline = time.monotonic() + seconds
        while not self._stopping and (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(SLEEP_SLICE, remaining))


def _ignore_progress(done: int, total: int) -> None:
    """The progress callback when no bar is drawn."""


def _stdin_is_terminal() -> bool:
    isatty = getattr(sys.stdin, "isatty", None)
    return bool(isatty and isatty())
