"""The public surface is curated: every name in __all__ resolves, and nothing else leaks."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mtls_hooks


def test_all_is_sorted_and_resolves() -> None:
    assert mtls_hooks.__all__ == sorted(mtls_hooks.__all__)
    for name in mtls_hooks.__all__:
        assert getattr(mtls_hooks, name) is not None, name


def test_public_names_have_no_private_home_leaking() -> None:
    public = {n for n in dir(mtls_hooks) if not n.startswith("_")}
    submodules = {
        "cli",
        "core",
        "inbox",
        "metrics",
        "outbox",
        "proxy",
        "queue",
        "receiver",
        "sender",
    }
    submodules |= {"serving", "stores", "testing"}
    assert public - submodules - {"annotations", "importlib", "TYPE_CHECKING", "Any"} <= set(
        mtls_hooks.__all__
    )


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = mtls_hooks.no_such_name


@pytest.mark.parametrize(
    ("name", "must_not_import"),
    [
        pytest.param("WebhookSender", ("quart", "hypercorn"), id="sender-without-quart"),
        pytest.param("WebhookReceiver", ("aiohttp",), id="receiver-without-aiohttp"),
        pytest.param("Outbox", ("quart", "hypercorn", "psycopg"), id="sqlite-outbox-light"),
        pytest.param("WebhookSender", ("psycopg", "mtls_hooks.queue"), id="sender-without-queue"),
    ],
)
def test_each_side_imports_only_its_stack(name: str, must_not_import: tuple[str, ...]) -> None:
    code = (
        "import sys, mtls_hooks; "
        f"mtls_hooks.{name}; "
        f"print(','.join(m for m in {must_not_import!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
