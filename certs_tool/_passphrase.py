"""Where the CLI gets passphrases: a prompt, a file or an environment variable, never argv.

A passphrase on the command line leaks through ``ps``, shell history and CI logs, so
every passphrase option names a *source*. Each passphrase role (``--ca-``, ``--key-``,
``--parent-`` or none) gets the same three options: ``--ROLE-passphrase-file FILE``,
``--ROLE-passphrase-env VAR`` and ``--ROLE-passphrase-prompt``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from certs_tool._blob import Blob
from certs_tool._errors import CertsToolError

__all__ = ["add_passphrase_options", "existing_passphrase", "new_passphrase"]


def add_passphrase_options(parser: argparse.ArgumentParser, role: str, what: str) -> None:
    """Add the three mutually exclusive sources of one passphrase to ``parser``.

    Args:
        parser: the subcommand parser.
        role: the option prefix, e.g. ``"ca-"``, ``"key-"`` or ``""``.
        what: what the passphrase protects, for the help text.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        f"--{role}passphrase-file",
        metavar="FILE",
        help=f"read the passphrase of {what} from FILE (first line)",
    )
    group.add_argument(
        f"--{role}passphrase-env",
        metavar="VAR",
        help=f"read the passphrase of {what} from environment variable VAR",
    )
    group.add_argument(
        f"--{role}passphrase-prompt",
        action="store_true",
        help=f"prompt for the passphrase of {what}",
    )


def new_passphrase(args: argparse.Namespace, role: str, what: str) -> bytes | None:
    """The passphrase to encrypt a new key with, or None to leave it unencrypted.

    Raises:
        CertsToolError: if the source is unreadable or empty, or the prompts differ.
    """
    return _from_options(args, role, what, confirm=True)


def existing_passphrase(
    args: argparse.Namespace, role: str, what: str, key_path: str | os.PathLike[str]
) -> bytes | None:
    """The passphrase of an existing key file, prompting only when it is encrypted.

    Raises:
        CertsToolError: if the source is unreadable or empty.
    """
    given = _from_options(args, role, what, confirm=False)
    if given is not None:
        return given
    path = Path(key_path)
    encrypted = path.is_file() and b"ENCRYPTED" in Blob.from_path(path, secret=True).bytes()
    if encrypted and sys.stdin.isatty():
        return _prompt(what, confirm=False)
    return None


def _from_options(args: argparse.Namespace, role: str, what: str, *, confirm: bool) -> bytes | None:
    attr = role.replace("-", "_") + "passphrase"
    file_name: str | None = getattr(args, attr + "_file", None)
    env_name: str | None = getattr(args, attr + "_env", None)
    if file_name is not None:
        lines = Blob.from_path(file_name, secret=True).bytes().splitlines()
        return _non_empty(lines[0] if lines else b"", f"{file_name}")
    if env_name is not None:
        value = os.environ.get(env_name)
        if value is None:
            raise CertsToolError(f"environment variable {env_name} is not set")
        return _non_empty(value.encode(), f"environment variable {env_name}")
    if getattr(args, attr + "_prompt", False):
        return _prompt(what, confirm=confirm)
    return None


def _prompt(what: str, *, confirm: bool) -> bytes:
    try:
        first = getpass.getpass(f"passphrase for {what}: ")
        if confirm and getpass.getpass(f"passphrase for {what} (again): ") != first:
            raise CertsToolError("the passphrases differ")
    except EOFError as exc:
        raise CertsToolError(f"no passphrase for {what}: input ended") from exc
    return _non_empty(first.encode(), "the prompt")


def _non_empty(value: bytes, source: str) -> bytes:
    if not value:
        raise CertsToolError(f"empty passphrase from {source}")
    return value
