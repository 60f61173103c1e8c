"""CeleryTaskPublisher: hand each message to a Celery task, by name.

The task receives one argument, the message body as a JSON-ready dict
(`{"message_id", "destination", "event"}`), and runs with the message id as its task id, so
it can de-duplicate with `eventsourcing_app.outbox.consumer.handle_once(body["message_id"])`.
The sender needs only the task's name, not its code: the task may live in another service.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from celery import Celery, current_app
from django.core.exceptions import ImproperlyConfigured
from kombu.exceptions import KombuError

from ...exceptions import PublishError
from ._batch import publish_each
from .base import OutgoingMessage, Publisher


class CeleryTaskPublisher(Publisher):
    """Sends `task` with the message body: delivered once the broker has taken the task.

    With `task_always_eager` (the embedded default, no broker) the task runs right here, in
    this process, and a task that raises leaves the message undelivered, to be retried. Sent
    through a broker, what the task does later is the task's business (its own retries).

    Args:
        task: the task's registered name (e.g. "shop.notify_order").
        queue: the queue to send it to; None uses the task's route or the default queue.
    """

    def __init__(self, *, task: str, queue: str | None = None) -> None:
        if not isinstance(task, str) or not task.strip():
            raise ImproperlyConfigured(f"CeleryTaskPublisher: task must be a task name, not {task!r}.")
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ImproperlyConfigured(f"CeleryTaskPublisher: queue must be a queue name or None, not {queue!r}.")
        self.task = task
        self.queue = queue

    def publish(self, message: OutgoingMessage) -> None:
        # What a worker would receive after the broker's JSON round trip (Decimals as strings…).
        body = json.loads(message.body_bytes())
        app = current_app._get_current_object()
        if app.conf.task_always_eager:
            self._run_here(app, body, message.message_id)
            return
        try:
            app.send_task(self.task, args=(body,), task_id=message.message_id, queue=self.queue)
        except (KombuError, OSError) as exc:
            raise PublishError(f"Sending Celery task {self.task!r} failed: {type(exc).__name__}: {exc}") from exc

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """One task per message; once the broker is unreachable the rest fail untried."""
        return publish_each(self.publish, messages, unreachable=_broker_failure)

    def _run_here(self, app: Celery, body: dict[str, Any], message_id: str) -> None:
        if self.task not in app.tasks:
            raise PublishError(f"No Celery task named {self.task!r} is registered in this process (eager mode).")
        app.tasks[self.task].apply(args=(body,), task_id=message_id, throw=True)


def _broker_failure(exc: BaseException) -> bool:
    return isinstance(exc, PublishError) and isinstance(exc.__cause__, KombuError | OSError)
