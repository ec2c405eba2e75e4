"""RFC 9457 problem details: the only shape in which the receiver refuses a request."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PROBLEM_CONTENT_TYPE", "problem_body"]

PROBLEM_CONTENT_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem_body(
    status: int, *, detail: str, problem_type: str = "about:blank", **extra: Any
) -> bytes:
    """Serialise an RFC 9457 problem object.

    Args:
        status: the HTTP status code, repeated in the body (RFC 9457 §3.1.3).
        detail: one line that helps the client fix the request; never a secret.
        problem_type: a URI naming the problem type; ``about:blank`` by default.
        extra: extension members such as ``reason``.
    """
    body = {
        "type": problem_type,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **extra,
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
