"""The one error type of certs_tool.

Every bad input (a missing CA, a bad SAN, a wrong passphrase, an unknown key type, an
unwritable directory) raises :class:`CertsToolError`, so the CLI can print one line and
exit non-zero instead of showing a traceback. Foreign exceptions (``OSError``,
``ValueError`` from cryptography, ``ssl.SSLError``) are translated where they happen,
always with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = ["CertsToolError"]


class CertsToolError(Exception):
    """A certs_tool operation could not be carried out; the message says why."""
