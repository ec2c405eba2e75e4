"""``mtls-hooks inbox``: operate a receiver's inbox: status, dead letter, replay, purge.

The outbox's verbs (:mod:`mtls_hooks.cli._queue_verbs`) on the events an endpoint in inbox
mode stored. ``--store URL`` defaults to ``$MTLS_HOOKS_INBOX_URL``, the receiver's own
setting, so the environment that serves the receiver also serves its operator. ``list`` shows
each event's ``webhook-id`` beside the job id; ``show`` adds the sender's identity (subject
and SPIFFE ID, public facts of its certificate). Neither shows an event's body.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Final

from mtls_hooks.cli._queue_verbs import QueueCommand
from mtls_hooks.core._errors import ConfigurationError

if TYPE_CHECKING:
    from mtls_hooks.inbox._inbox import Inbox
    from mtls_hooks.queue._protocol import Job

__all__ = ["INBOX", "add_parser", "run"]

_EXAMPLE_ENV = """\
examples:
  export MTLS_HOOKS_INBOX_URL=sqlite:////var/lib/hooks/inbox.sqlite3
"""
_EXIT_STATUS = """
Exit status: 0 on success; 1 on a configuration or store error (one line on stderr).
"""
_PURGE_NOTE = """\
Delete handled and dead-lettered events last updated longer ago than AGE. A purged event's
webhook-id is forgotten: a sender's late retry of it is stored and handled again. Keep events
at least as long as senders retry (Standard Webhooks senders: about three days)."""


def _open_inbox(url: str) -> Inbox:
    from mtls_hooks.inbox._inbox import Inbox

    return Inbox(url)


def _webhook_id(job: Job) -> str:
    return str(job.meta.get("webhook_id") or "-")


def _sender_lines(job: Job) -> list[str]:
    """``show``'s lines for an inbox event: its ``webhook-id`` and who sent it."""
    from mtls_hooks.inbox._envelope import event_from_job

    lines = [f"webhook_id {_webhook_id(job)}"]
    try:
        peer = event_from_job(job).peer
    except ConfigurationError:  # a row this version cannot read: its last error says so
        return [*lines, "peer unreadable"]
    if peer is None:
        return [*lines, "peer -"]
    return [*lines, f"peer {peer.subject}", f"spiffe_id {peer.spiffe_id or '-'}"]


#: The inbox's operator verbs: verified events waiting for, or done with, their handler.
INBOX: Final = QueueCommand(
    name="inbox",
    noun="event",
    article="an",
    store_env="MTLS_HOOKS_INBOX_URL",
    open_view=_open_inbox,
    purge_help="delete handled and failed events (their ids are forgotten)",
    purge_note=_PURGE_NOTE,
    list_label=_webhook_id,
    show_details=_sender_lines,
)


def add_parser(subparsers: Any) -> None:
    """Register the ``inbox`` subcommand and its verbs."""
    INBOX.add_parser(
        subparsers,
        run=run,
        help="operate a receiver's inbox: status, dead letter, replay, purge",
        description="Inspect and operate the inbox of a receiver's endpoints in inbox mode.",
        epilog=_EXAMPLE_ENV + INBOX.examples() + _EXIT_STATUS,
    )


def run(args: argparse.Namespace) -> int:
    """Run one verb against the inbox.

    Returns:
        0 on success.

    Raises:
        ConfigurationError: no store, a malformed URL, an unknown event, a bad duration.
        StoreUnavailableError: the store cannot be reached.
    """
    return INBOX.run(args)
