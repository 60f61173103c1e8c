"""WebhookPublisher: one signed HTTP POST per message, and `verify_signature` for the receiving end.

The body is `OutgoingMessage.body_bytes()`: a JSON object with the event and a top-level
`message_id`, which is also sent as `X-Message-ID`. `X-Signature: sha256=<hex>` is the
HMAC-SHA256 of the raw body with the shared secret, so a receiver can tell our messages from
anyone else's. A retry sends the same message id and signs again (the body is rebuilt, the
signature always matches it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from urllib.parse import urlsplit

import requests
import urllib3
from django.core.exceptions import ImproperlyConfigured
from requests.adapters import HTTPAdapter

from ... import __version__
from ...exceptions import PublishError
from ..signing import sign, verify_signature
from ._batch import publish_each
from ._urls import redact
from .base import OutgoingMessage, Publisher

__all__ = ["WebhookPublisher", "sign", "verify_signature"]

# How much of an error response's body goes into the error (and so into last_error and logs).
ERROR_BODY_CHARS = 200
# A 2xx body is read (so the connection can be reused) up to this many bytes, then dropped.
MAX_DRAINED_BYTES = 1 << 20


class WebhookPublisher(Publisher):
    """POSTs each message to `url`; any 2xx is delivered, anything else (3xx included) raises.

    One pooled `requests.Session` per publisher keeps connections alive across a batch.
    Redirects are not followed: a POST redirected as a GET would look delivered.

    Args:
        url: the receiver's http(s) URL.
        secret: the shared HMAC secret (required: an unsigned webhook cannot be trusted).
        timeout: seconds to connect and to wait for the response, or a (connect, read) pair.
        headers: extra headers (e.g. Authorization); they cannot replace the signing headers.
    """

    def __init__(
        self,
        *,
        url: str,
        secret: str,
        timeout: float | tuple[float, float] = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ImproperlyConfigured(f"WebhookPublisher: url must be an http(s) URL, not {url!r}.")
        if not isinstance(secret, str) or not secret:
            raise ImproperlyConfigured("WebhookPublisher: secret must be a non-empty string (it signs every body).")
        self.url = url
        self.secret = secret
        self.timeout = _timeout(timeout)
        self.shown_url = redact(url)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)  # the outbox does the retrying
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": f"eventsourcing-app/{__version__}", **dict(headers or {})})

    def publish(self, message: OutgoingMessage) -> None:
        body = message.body_bytes()
        headers = {
            "Content-Type": "application/json",
            "X-Message-ID": message.message_id,
            "X-Signature": sign(body, self.secret),
        }
        try:
            response = self.session.post(
                self.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False, stream=True
            )
        except requests.Timeout as exc:
            raise PublishError(
                f"POST {self.shown_url} timed out ({self.timeout[0]:g}s connect, {self.timeout[1]:g}s read)."
            ) from exc
        except requests.RequestException as exc:
            raise PublishError(f"POST {self.shown_url} failed: {type(exc).__name__}.") from exc
        with response:
            if 200 <= response.status_code < 300:
                _drain(response)
                return
            excerpt = _excerpt(response)
        raise PublishError(f"POST {self.shown_url} answered {response.status_code} {response.reason}: {excerpt}")

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """One POST at a time; once the receiver cannot be reached (refused, timed out) the rest fail untried."""
        return publish_each(self.publish, messages, unreachable=_transport_failure)

    def close(self) -> None:
        self.session.close()


def _transport_failure(exc: BaseException) -> bool:
    return isinstance(exc.__cause__, requests.ConnectionError | requests.Timeout)


def _timeout(value: float | tuple[float, float]) -> tuple[float, float]:
    pair = value if isinstance(value, tuple | list) else (value, value)
    if len(pair) != 2 or not all(isinstance(t, int | float) and not isinstance(t, bool) and t > 0 for t in pair):
        raise ImproperlyConfigured(
            f"WebhookPublisher: timeout must be a positive number of seconds or a (connect, read) pair, not {value!r}."
        )
    return float(pair[0]), float(pair[1])


def _drain(response: requests.Response) -> None:
    """Read a success body (bounded) so the pooled connection can serve the next message.

    The status already said "delivered": a body cut short changes nothing.
    """
    read = 0
    with suppress(requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        for chunk in response.iter_content(chunk_size=65536):
            read += len(chunk)
            if read > MAX_DRAINED_BYTES:
                return


def _excerpt(response: requests.Response) -> str:
    """The start of an error body, enough to tell what the receiver said, never a whole page."""
    try:
        raw = response.raw.read(ERROR_BODY_CHARS * 4, decode_content=True) or b""
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError):
        return "(body unreadable)"
    text = " ".join(raw.decode(response.encoding or "utf-8", errors="replace").split())
    return repr(text[:ERROR_BODY_CHARS] + ("…" if len(text) > ERROR_BODY_CHARS else ""))
