"""The ``mtls-hooks`` command: ``serve`` a receiver, ``send`` a webhook, make keys with ``keygen``,
operate the ``outbox`` (``deliver``) and the inbox (``process-inbox``).

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and
``run(args) -> int``; this module only dispatches and turns our errors into one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mtls_hooks.core._errors import MtlsHooksError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand registered."""
    from mtls_hooks.cli import _deliver, _inbox, _keygen, _outbox, _process_inbox, _send, _serve

    parser = argparse.ArgumentParser(
        prog="mtls-hooks",
        description="Webhooks over mutual TLS: serve a receiver, send events, make keys.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (_serve, _send, _keygen, _outbox, _deliver, _inbox, _process_inbox):
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status.

    Errors are printed as one line on stderr with a non-zero status, never a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except MtlsHooksError as exc:
        print(f"mtls-hooks: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
