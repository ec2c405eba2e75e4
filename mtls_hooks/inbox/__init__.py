"""The inbox: verified webhooks stored durably, answered 202, handled from the queue."""

from mtls_hooks.inbox._inbox import Inbox
from mtls_hooks.inbox._retry import InboxRetry
from mtls_hooks.inbox._worker import InboxCounts, InboxWorker

__all__ = ["Inbox", "InboxCounts", "InboxRetry", "InboxWorker"]
