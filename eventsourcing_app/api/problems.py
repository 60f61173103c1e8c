"""RFC 9457 problem details for every error the API returns.

This is the only place where error codes become HTTP statuses. Views of the
app use it directly; a project may also set it as DRF's EXCEPTION_HANDLER.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf
from rest_framework.response import Response

from ..exceptions import CommandValidationError, ConcurrencyError, EventSourcingError

logger = logging.getLogger("eventsourcing_app.api")

PROBLEM_CONTENT_TYPE = "application/problem+json"

STATUS_BY_CODE = {
    "invalid": 400,
    "invalid_stream_id": 422,
    "tenant_required": 400,
    "permission_denied": 403,
    "unknown_command": 404,
    "stream_not_found": 404,
    "concurrency_conflict": 409,
    "duplicate_event_id": 409,
    "idempotency_in_progress": 409,
    "command_rejected": 422,
    "idempotency_key_reused": 422,
    "command_timeout": 503,
}

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class PayloadTooLarge(drf.APIException):
    status_code = 413
    default_detail = "The request body is too large."
    default_code = "too_large"


def problem(status: int, detail: str | None = None, *, code: str | None = None, **extra: Any) -> Response:
    """A problem-details response: type, title, status, detail and any extra members."""
    body: dict[str, Any] = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status}
    if detail:
        body["detail"] = detail
    if code:
        body["code"] = code
    body.update(extra)
    return Response(body, status=status, content_type=PROBLEM_CONTENT_TYPE)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF exception handler: every exception becomes problem+json, never a traceback."""
    if isinstance(exc, EventSourcingError):
        return _from_app_error(exc)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf.PermissionDenied()
    if isinstance(exc, drf.APIException):
        return _from_drf_error(exc)
    logger.error("Unhandled error in %s", context.get("view"), exc_info=exc)
    return problem(500, code="server_error")


def _from_app_error(exc: EventSourcingError) -> Response:
    status = STATUS_BY_CODE.get(exc.code, 500)
    if status == 500:
        # An internal error: the detail stays in the server's log.
        logger.error("Command failed: %s", exc.code, exc_info=exc.__cause__ or exc)
        return problem(500, code=exc.code)
    extra: dict[str, Any] = {}
    if isinstance(exc, CommandValidationError):
        extra["errors"] = exc.errors
    if isinstance(exc, ConcurrencyError):
        extra.update(stream_id=exc.stream_id, expected_version=str(exc.expected), actual_version=exc.actual)
    return problem(status, exc.detail, code=exc.code, **extra)


def _from_drf_error(exc: drf.APIException) -> Response:
    extra: dict[str, Any] = {}
    if isinstance(exc, drf.ValidationError):
        detail = "Invalid input."
        extra["errors"] = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
    else:
        detail = str(exc.detail)
    response = problem(exc.status_code, detail, code=_code_of(exc), **extra)
    if auth_header := getattr(exc, "auth_header", None):
        response["WWW-Authenticate"] = auth_header
    if wait := getattr(exc, "wait", None):
        response["Retry-After"] = str(int(wait) + 1)
    return response


def _code_of(exc: drf.APIException) -> str:
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code
