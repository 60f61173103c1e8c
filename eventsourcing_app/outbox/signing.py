"""Webhook signatures: what `WebhookPublisher` sends in `X-Signature` and how a receiver checks it.

Kept apart from the publisher so that verifying (and `consumer.WebhookReceiverView`) needs no
HTTP client: it is the standard library's HMAC. `publishers.webhook` re-exports both.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The `X-Signature` value for `body`: "sha256=" and the hex HMAC-SHA256 of it with `secret`."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """Whether `header` (an `X-Signature` value, "sha256=" prefix optional) signs `body` with `secret`.

    Compare in constant time, on the raw request body exactly as received (before any JSON
    parsing): re-serialising changes the bytes and so the signature.
    """
    if not header or not secret:
        return False
    candidate = header.strip()
    if candidate[: len(SIGNATURE_PREFIX)].lower() == SIGNATURE_PREFIX:
        candidate = candidate[len(SIGNATURE_PREFIX) :]
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), candidate.lower().encode())
