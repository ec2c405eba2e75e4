"""Quart responses carrying RFC 9457 problem bodies: how the receiver refuses a request."""

from __future__ import annotations

from typing import Any

from mtls_hooks.core._problem import PROBLEM_CONTENT_TYPE, problem_body

__all__ = ["problem_response"]


def problem_response(status: int, *, detail: str, **extra: Any) -> Any:
    """Return a Quart response carrying an RFC 9457 problem body.

    Quart is imported on first use, so that importing the receiver package stays cheap for
    the serving layer and the CLI.
    """
    from quart import Response

    headers = {"Cache-Control": "no-store"}
    if status == 401:
        # RFC 9110 §11.6.1: a 401 must say how to authenticate.
        headers["WWW-Authenticate"] = 'Signature realm="webhooks"'
    return Response(
        problem_body(status, detail=detail, **extra),
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )
