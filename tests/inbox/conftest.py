"""The inbox tests share the receiver's signing sender, certificates and decision log."""

from tests.receiver.conftest import log_lines, sender, sender_cert, stranger_cert

__all__ = ["log_lines", "sender", "sender_cert", "stranger_cert"]
