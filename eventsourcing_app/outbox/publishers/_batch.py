"""Publishing a batch one message at a time, stopping early when the destination is unreachable or time is up.

The processor sets a deadline (`sending_until`) around each `publish_many` call: past it,
the lease under which it holds the messages may run out while a message is in flight, and
another processor could take the message and send it too. `publish_each` starts no message
after the deadline; the ones it leaves answer `NotSent`, which the processor gives back
untried (no attempt counted) or sends after renewing its lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from ...exceptions import PublishError

if TYPE_CHECKING:
    from .base import OutgoingMessage

# time.monotonic() after which no message may be started, while a processor's call runs.
_deadline: ContextVar[float | None] = ContextVar("outbox_send_deadline", default=None)


class NotSent(PublishError):
    """Not tried: the call's deadline had passed. Not a failed attempt."""


@contextmanager
def sending_until(deadline: float) -> Iterator[None]:
    """Let `publish_each` start messages until `deadline` (a time.monotonic() value) within this block."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def publish_each(
    publish: Callable[[OutgoingMessage], None],
    messages: Sequence[OutgoingMessage],
    *,
    unreachable: Callable[[BaseException], bool],
) -> list[BaseException | None]:
    """`publish` each message in order; one result per message (None: delivered).

    Once an error says the destination itself is unreachable (refused, timed out, broker
    gone), the rest of the batch fails with that error untried: trying each would cost a
    timeout per message and could outlast the processor's lease on the batch. Once the
    deadline set by `sending_until` has passed, the rest answer `NotSent`.
    """
    deadline = _deadline.get()
    results: list[BaseException | None] = []
    for message in messages:
        if deadline is not None and time.monotonic() >= deadline:
            left = len(messages) - len(results)
            results.extend(NotSent("Not sent: the lease would not have covered it.") for _ in range(left))
            break
        try:
            publish(message)
        except Exception as exc:  # any failure means "not delivered, retry later"
            results.append(exc)
            if unreachable(exc):
                results.extend(exc for _ in range(len(messages) - len(results)))
                break
        else:
            results.append(None)
    return results
