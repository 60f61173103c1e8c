"""What the COMMIT_HOOKS of one transaction share while they run at its commit.

Django runs a transaction's on-commit callbacks one after another once it has
committed, and the store registers its COMMIT_HOOKS once per append. A worker
whose transaction appended for hundreds of commands (a saga batch) would then
nudge the same projection hundreds of times, each a round trip to the cache,
when one nudge already covers every event of that commit. A hook can wrap
such a thing in `once_per_commit(key, action)`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

_current: ContextVar[CommitRun | None] = ContextVar("eventsourcing_commit_run", default=None)


class CommitRun:
    """The callbacks registered in one transaction. `started` once they run: the next transaction gets a new one."""

    __slots__ = ("done", "started")

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.started = False


def for_connection(connection: Any) -> CommitRun:
    """The run the callbacks of the connection's current transaction share.

    A run whose callbacks have started belongs to a committed transaction; one of a
    rolled-back transaction never started and has done nothing, so it can be reused.
    """
    run = getattr(connection, "_eventsourcing_commit_run", None)
    if run is None or run.started:
        run = CommitRun()
        connection._eventsourcing_commit_run = run
    return run


def run_hook(run: CommitRun, hook: Callable[[Any], None], recorded: Any) -> None:
    """Call hook(recorded) as part of `run`."""
    run.started = True
    token = _current.set(run)
    try:
        hook(recorded)
    finally:
        _current.reset(token)


def once_per_commit(key: str, action: Callable[[], Any]) -> None:
    """action(), unless it already succeeded for `key` in this commit's hooks (outside hooks: always)."""
    run = _current.get()
    if run is None:
        action()
        return
    if key in run.done:
        return
    action()
    run.done.add(key)
