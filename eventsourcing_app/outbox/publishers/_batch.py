"""Publishing a batch one message at a time, stopping early when the destination is unreachable."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .base import OutgoingMessage


def publish_each(
    publish: Callable[[OutgoingMessage], None],
    messages: Sequence[OutgoingMessage],
    *,
    unreachable: Callable[[BaseException], bool],
) -> list[BaseException | None]:
    """`publish` each message in order; one result per message (None: delivered).

    Once an error says the destination itself is unreachable (refused, timed out, broker
    gone), the rest of the batch fails with that error untried: trying each would cost a
    timeout per message and could outlast the processor's lease on the batch.
    """
    results: list[BaseException | None] = []
    for message in messages:
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
