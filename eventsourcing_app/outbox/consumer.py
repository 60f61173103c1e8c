"""The receiving end: exactly-once effects from at-least-once delivery.

The outbox may deliver a message more than once (a processor dies after publishing and
before recording it; a receiver answers too late). Every delivery carries the same
`message_id`, so a receiver that records the ids it has handled, in the same transaction as
what it does, can skip a redelivery:

```py
with handle_once(body["message_id"], consumer="billing") as first:
    if first:
        Invoice.objects.create(order_id=body["event"]["data"]["order_id"])
```

`consume_once` does the same for a function taking the message body (a Celery task fed by
`CeleryTaskPublisher`), and `WebhookReceiverView` for a webhook fed by `WebhookPublisher`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from ..models import ProcessedMessage
from .signing import verify_signature

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

CONSUMER_MAX_LENGTH = ProcessedMessage._meta.get_field("consumer").max_length
MESSAGE_ID_MAX_LENGTH = ProcessedMessage._meta.get_field("message_id").max_length


@contextmanager
def handle_once(message_id: str | UUID, *, consumer: str, using: str | None = None) -> Iterator[bool]:
    """A transaction that yields True the first time `consumer` handles `message_id`, else False.

    Do the effect inside the block, only when it yielded True. The id is recorded in the
    block's transaction: if the effect raises, both roll back and a redelivery tries again;
    once it has committed, every later delivery yields False. Two deliveries at once are
    serialised by the unique (consumer, message_id) row: the second waits for the first's
    transaction and yields False if it committed (True if it rolled back).

    Args:
        message_id: the message's id (`body["message_id"]`, the `X-Message-ID` header...).
        consumer: who is handling it: one name per handler, so two handlers of the same
            message each get their own "first".
        using: the database alias (where the effect is written).

    Raises:
        ValueError: an empty or too long message id or consumer name.
    """
    message_id, consumer = _checked(message_id, consumer)
    with transaction.atomic(using=using):
        yield _record(message_id, consumer, using)


def consume_once(
    *, consumer: str, key: Callable[..., str | UUID] | None = None, using: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Decorate a message handler so its effect happens once per message id.

    The handler runs inside `handle_once`; for a redelivery it is not called and the wrapper
    returns None.

    Args:
        consumer: the handler's name (see `handle_once`).
        key: picks the message id from the handler's arguments; by default the first
            argument is the message body and its "message_id" is used.
        using: the database alias.
    """
    pick = key or _body_message_id

    def decorate(handler: Callable[P, R]) -> Callable[P, R | None]:
        @functools.wraps(handler)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
            with handle_once(pick(*args, **kwargs), consumer=consumer, using=using) as first:
                if not first:
                    logger.info("%s: message %s already handled, skipped", consumer, pick(*args, **kwargs))
                    return None
                return handler(*args, **kwargs)

        return wrapper

    return decorate


def cleanup_processed_messages(*, older_than: timedelta, consumer: str | None = None, using: str | None = None) -> int:
    """Forget ids handled more than `older_than` ago; returns how many were deleted.

    Keep ids for longer than a message can still arrive: the outbox's whole retry schedule,
    plus the time a dead-lettered message may wait before an operator requeues it. An id
    forgotten earlier makes a late redelivery look new.
    """
    if not isinstance(older_than, timedelta) or older_than < timedelta(0):
        raise ValueError(f"older_than must be a non-negative timedelta, not {older_than!r}.")
    rows = ProcessedMessage.objects.using(using).filter(processed_at__lt=timezone.now() - older_than)
    if consumer is not None:
        rows = rows.filter(consumer=consumer)
    deleted, _ = rows.delete()
    return deleted


@method_decorator(csrf_exempt, name="dispatch")
class WebhookReceiverView(View):
    """A Django view receiving `WebhookPublisher` POSTs: verify, de-duplicate, then `handle(body)`.

    Subclass it, set `consumer`, and implement `get_secret()` and `handle()`. Answers 200
    `{"message_id", "duplicate"}` once handled (or for a redelivery, without calling
    `handle`), 403 when `X-Signature` does not sign the raw body, 400 for a body that is not
    a JSON object with a `message_id` (or whose `X-Message-ID` disagrees with it); all errors
    as problem details. An exception from `handle` rolls the id back and ends in a 500, so
    the sender retries.
    """

    consumer: str = ""
    http_method_names = ["post"]

    def get_secret(self) -> str:
        """The shared secret the sender signs with (read it from settings, not from code)."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_secret().")

    def handle(self, body: dict[str, Any]) -> None:
        """Do the message's effect; called once per message id, inside its transaction."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle().")

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        raw = request.body
        if not verify_signature(raw, request.headers.get("X-Signature"), self.get_secret()):
            return _problem(403, "The X-Signature header does not sign this body.")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _problem(400, "The body is not JSON.")
        message_id = body.get("message_id") if isinstance(body, dict) else None
        if not isinstance(message_id, str) or not message_id:
            return _problem(400, "The body is not a JSON object with a message_id.")
        if request.headers.get("X-Message-ID", message_id) != message_id:
            return _problem(400, "The X-Message-ID header does not match the body's message_id.")
        with handle_once(message_id, consumer=self.consumer or type(self).__name__) as first:
            if first:
                self.handle(body)
        return JsonResponse({"message_id": message_id, "duplicate": not first})


def _record(message_id: str, consumer: str, using: str | None) -> bool:
    try:
        # A savepoint: the duplicate's IntegrityError must not break the surrounding transaction.
        with transaction.atomic(using=using):
            ProcessedMessage.objects.using(using).create(consumer=consumer, message_id=message_id)
    except IntegrityError:
        return False
    return True


def _checked(message_id: str | UUID, consumer: str) -> tuple[str, str]:
    message_id = str(message_id) if isinstance(message_id, UUID) else message_id
    if not isinstance(message_id, str) or not message_id or len(message_id) > MESSAGE_ID_MAX_LENGTH:
        raise ValueError(f"message_id must be a non-empty string of at most {MESSAGE_ID_MAX_LENGTH} characters.")
    if not isinstance(consumer, str) or not consumer or len(consumer) > CONSUMER_MAX_LENGTH:
        raise ValueError(f"consumer must be a non-empty name of at most {CONSUMER_MAX_LENGTH} characters.")
    return message_id, consumer


def _body_message_id(body: Any, *args: Any, **kwargs: Any) -> str:
    if not isinstance(body, dict) or "message_id" not in body:
        raise ValueError("consume_once: the first argument must be a message body with a 'message_id'.")
    return body["message_id"]


def _problem(status: int, detail: str) -> JsonResponse:
    title = {400: "Bad Request", 403: "Forbidden"}[status]
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JsonResponse(body, status=status, content_type="application/problem+json")
