"""What the app's management commands share: app errors as `CommandError`, and an optional progress bar.

Management commands are the one place that turns `EventSourcingError`s into
`CommandError`s (exceptions.py): `manage.py` then prints the message and exits
non-zero without a traceback, and `call_command` raises it for scripts and tests.

A progress bar (tqdm: count, events/s and ETA) is shown only on a terminal and
never under `--no-progress`, so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from ...exceptions import EventSourcingError

ProgressCallback = Callable[[int, int], None]


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


def _ignore_progress(done: int, total: int) -> None:
    """The progress callback when no bar is drawn."""


def _stdin_is_terminal() -> bool:
    isatty = getattr(sys.stdin, "isatty", None)
    return bool(isatty and isatty())
