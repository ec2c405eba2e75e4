"""A piece of PEM or DER data that can be read as bytes, written to disk or used as a temp file."""

from __future__ import annotations

import contextlib
import os
import tempfile as _tempfile
from collections.abc import Iterator
from pathlib import Path

from certs_tool._errors import CertsToolError

__all__ = ["Blob"]

_SECRET_MODE = 0o600
_PUBLIC_MODE = 0o644


class Blob:
    """Immutable bytes (a certificate, a key, a CRL, a PKCS#12 bundle) with safe file output.

    Secret blobs (private keys, PKCS#12 bundles) are written 0600 by default; nothing is
    ever overwritten unless asked.
    """

    __slots__ = ("_data", "_secret")

    def __init__(self, data: bytes, *, secret: bool = False) -> None:
        """Wrap ``data``; ``secret`` selects the 0600 default file mode."""
        self._data = bytes(data)
        self._secret = secret

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], *, secret: bool = False) -> Blob:
        """Read a file into a blob.

        Raises:
            CertsToolError: if the file cannot be read.
        """
        try:
            return cls(Path(path).read_bytes(), secret=secret)
        except OSError as exc:
            raise CertsToolError(f"cannot read {path}: {exc.strerror or exc}") from exc

    @property
    def secret(self) -> bool:
        """True when the data is key material."""
        return self._secret

    def bytes(self) -> bytes:
        """Return the raw data."""
        return self._data

    def __repr__(self) -> str:
        kind = "secret" if self._secret else "public"
        return f"<Blob {kind} {len(self._data)} bytes>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Blob):
            return NotImplemented
        return self._data == other._data

    def __hash__(self) -> int:
        return hash(self._data)

    def write_to_path(
        self, path: str | os.PathLike[str], *, mode: int | None = None, force: bool = False
    ) -> Path:
        """Write the data to ``path`` and return it.

        Args:
            path: destination file; its directory must exist.
            mode: file permissions; defaults to 0600 for secrets and 0644 otherwise.
            force: replace an existing file instead of refusing.

        Raises:
            CertsToolError: if the file exists and ``force`` is false, or cannot be written.
        """
        target = Path(path)
        file_mode = mode if mode is not None else self._default_mode()
        if target.exists() and not force:
            raise CertsToolError(f"{target} already exists (use --force to overwrite)")
        try:
            # Write a private temp file beside the target, then rename it into place: a
            # reader never sees a half-written key, and the key is never world-readable
            # even for an instant (mkstemp creates files 0600).
            fd, tmp_name = _tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        except OSError as exc:
            raise CertsToolError(f"cannot write {target}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._data)
                os.fchmod(handle.fileno(), file_mode)
            if force:
                os.replace(tmp_name, target)
            else:
                # link() fails if the target appeared meanwhile, unlike rename().
                os.link(tmp_name, target)
        except FileExistsError as exc:
            raise CertsToolError(f"{target} already exists (use --force to overwrite)") from exc
        except OSError as exc:
            raise CertsToolError(f"cannot write {target}: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        return target

    @contextlib.contextmanager
    def tempfile(self, dir: str | os.PathLike[str] | None = None) -> Iterator[str]:
        """Write the data to a 0600 temporary file, yield its path, then delete it.

        Useful for APIs that only take file names, such as ``SSLContext.load_cert_chain``.

        Raises:
            CertsToolError: if the temporary file cannot be created.
        """
        try:
            fd, name = _tempfile.mkstemp(dir=dir, suffix=".pem")
        except OSError as exc:
            raise CertsToolError(f"cannot create a temporary file: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._data)
            yield name
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def _default_mode(self) -> int:
        return _SECRET_MODE if self._secret else _PUBLIC_MODE
