"""Every TLS context mtls-hooks uses is built here, with its pinning hook.

The receiver and the sender both ask this module for an :class:`ssl.SSLContext`; no other
module sets a TLS option. Pinning is enforced inside the handshake: the contexts carry an
``sslobject_class`` (asyncio, uvloop, anyio) and an ``sslsocket_class`` (blocking sockets)
whose ``do_handshake`` checks the *verified* leaf against a :class:`PeerPolicy` and raises
:class:`PinError` (an :class:`ssl.SSLError`) before one application byte is exchanged.
``read`` and ``write`` run the same check when they, not ``do_handshake``, finish the
handshake (``do_handshake_on_connect=False``, or ``SSLObject.read`` first).

A resumed TLS 1.2 session skips chain verification, CRL included: the leaf is then
re-checked against the revocation list and the expiry the current context holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import ssl
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from mtls_hooks.core._errors import ConfigurationError, PinError
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.core._policy import PeerPolicy

__all__ = [
    "HandshakeRefusal",
    "PinningContext",
    "create_client_context",
    "create_server_context",
    "load_client_ca",
]

# TLS 1.2 suites limited to ECDHE key exchange with AEAD ciphers (RFC 7540 §9.2.2 blocklist,
# Mozilla "intermediate"). TLS 1.3 suites are all AEAD and are not affected by this string.
AEAD_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
DEFAULT_ALPN = ("h2", "http/1.1")

PathLike = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class HandshakeRefusal:
    """Why a peer was refused during the handshake; handed to ``PinningContext.on_refusal``.

    Attributes:
        reason: a short code (``"unpinned"``, ``"cert-verify-failed"``, ``"no-certificate"``,
            ``"handshake-failed"``; ``"revoked-on-resume"`` and ``"expired-on-resume"`` for a
            resumed session whose certificate is now revoked or expired).
        detail: one human-readable line, never key material.
        identity: the verified peer identity, when the chain verified but pins did not match.
    """

    reason: str
    detail: str
    identity: PeerIdentity | None = None


RefusalHook = Callable[[ssl.SSLObject | ssl.SSLSocket, HandshakeRefusal], None]


class PinningContext(ssl.SSLContext):
    """An :class:`ssl.SSLContext` whose handshakes also enforce :attr:`peer_policy`.

    Attributes:
        peer_policy: checked against the verified leaf after every handshake; ``None``
            disables pinning (chain verification still applies).
        on_refusal: called with every refused handshake, for logging.
        description: what this context verifies against, used in error messages
            (for example ``"ca.pem"``).
        revoked: ``(issuer, serial)`` of every certificate the loaded CRLs revoke, checked
            on resumed sessions, which skip OpenSSL's own CRL check.
    """

    peer_policy: PeerPolicy | None = None
    on_refusal: RefusalHook | None = None
    description: str = "the system trust store"
    revoked: frozenset[tuple[x509.Name, int]] = frozenset()


def _classify(exc: ssl.SSLError) -> HandshakeRefusal:
    if isinstance(exc, PinError):
        return HandshakeRefusal("unpinned", str(exc))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return HandshakeRefusal("cert-verify-failed", str(exc.verify_message or exc.reason))
    reason = str(getattr(exc, "reason", "") or exc)
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason.upper():
        return HandshakeRefusal("no-certificate", "peer did not present a certificate")
    return HandshakeRefusal("handshake-failed", reason.lower().replace("_", " "))


def _check_resumed(conn: ssl.SSLObject | ssl.SSLSocket) -> None:
    """Refuse a resumed session whose leaf is now revoked or expired.

    OpenSSL verifies the chain (and the CRL) on full handshakes only; a resumption restores
    the peer certificate from the session cache without looking at it again. ``OP_NO_TICKET``
    does not help: the server's session-ID cache stays on, lives on the listening context
    across reloads, and Python's ``ssl`` does not expose ``SSL_CTX_set_session_cache_mode``
    (https://docs.openssl.org/3.0/man3/SSL_CTX_set_session_cache_mode/). ``conn.context``
    is the snapshot the reload ``sni_callback`` selected for this handshake, so its
    ``revoked`` set is the CRL in force now, not the one of the original handshake.
    """
    der = conn.getpeercert(binary_form=True)
    if der is None:
        return  # the session had no peer certificate: _enforce_policy refuses it if pinned
    cert = x509.load_der_x509_certificate(der)
    revoked: frozenset[tuple[x509.Name, int]] = getattr(conn.context, "revoked", frozenset())
    if (cert.issuer, cert.serial_number) in revoked:
        reason, why = "revoked-on-resume", "resumed session of a revoked certificate"
    elif cert.not_valid_after_utc < dt.datetime.now(dt.UTC):
        reason, why = "expired-on-resume", "resumed session of an expired certificate"
    else:
        return
    identity = PeerIdentity.from_der(der)
    _refuse(
        conn,
        HandshakeRefusal(reason, why, identity),
        PinError(why, reason=reason, subject=identity.subject, spki_pin=identity.spki_pin),
    )


def _enforce_policy(conn: ssl.SSLObject | ssl.SSLSocket) -> None:
    context = conn.context
    if conn.session_reused:
        _check_resumed(conn)
    policy = getattr(context, "peer_policy", None)
    if policy is None:
        return
    # getpeercert() returns the leaf the TLS stack verified under CERT_REQUIRED; never a
    # certificate taken from the peer's own (unverified) chain (OkHttp CVE-2016-2402).
    der = conn.getpeercert(binary_form=True)
    if der is None:
        raise PinError(
            "peer presented no certificate", reason="no-certificate", subject="", spki_pin=""
        )
    identity = PeerIdentity.from_der(der)
    why = policy.check(identity)
    if why is not None:
        _refuse(
            conn,
            HandshakeRefusal("unpinned", why, identity),
            PinError(why, reason="unpinned", subject=identity.subject, spki_pin=identity.spki_pin),
        )


# RFC 5246 §6.2.1 and §7.2: one plaintext alert record (type 21, version 3,3, length 2) holding
# a fatal (2) access_denied (49): "a valid certificate was received, but when access control
# was applied, the sender decided not to proceed with negotiation".
_TLS12_ACCESS_DENIED = bytes((21, 3, 3, 0, 2, 2, 49))


def _refuse(
    conn: ssl.SSLObject | ssl.SSLSocket, refusal: HandshakeRefusal, error: PinError
) -> NoReturn:
    """Refuse a handshake OpenSSL completed: queue what the peer should read, report, raise.

    OpenSSL has no hook between its chain check and its last flight that the stdlib exposes,
    so a refusal of ours comes after OpenSSL accepted the peer, and OpenSSL sends no alert of
    its own. What a refused client reads instead, when the connection is a memory-BIO
    :class:`ssl.SSLObject` on the server side (asyncio; the ``on_refusal`` hook, not asyncio,
    writes it out: ``mtls_hooks.serving._refusals``):

    * a full TLS 1.2 handshake: the server's ChangeCipherSpec and Finished are still in the
      outgoing BIO, unsent. They are dropped, and a plaintext fatal ``access_denied`` alert
      takes their place: on the wire the server aborted the handshake before its Finished,
      as OpenSSL itself does when a verify callback fails.
    * TLS 1.3, or a resumed TLS 1.2 session: the server's Finished went out before the
      client's certificate (or resumption) was checked, and an alert now must be encrypted
      under keys only OpenSSL holds; it encrypts one alert on request, ``close_notify``
      (``SSL_shutdown``). The client sees a clean close from the server, not a network fault.
    """
    outgoing = getattr(conn, "_mtls_outgoing", None)
    if outgoing is not None and conn.server_side:
        if conn.version() == "TLSv1.2" and not conn.session_reused:
            outgoing.read()
            outgoing.write(_TLS12_ACCESS_DENIED)
        else:
            # Writes close_notify, then wants the peer's (SSLWantReadError): not waited for.
            with contextlib.suppress(ssl.SSLError):
                conn.unwrap()
    _report(conn, refusal)
    raise error


def _report(conn: ssl.SSLObject | ssl.SSLSocket, refusal: HandshakeRefusal) -> None:
    hook = getattr(conn.context, "on_refusal", None)
    if hook is not None:
        hook(conn, refusal)


def _run_policy_once(conn: _PinningSSLObject | _PinningSSLSocket) -> None:
    # A refused check is remembered: later reads and writes fail the same way (and are
    # not logged twice) instead of exchanging data.
    if conn._mtls_refusal is not None:
        raise conn._mtls_refusal
    if conn._mtls_policy_checked:
        return
    try:
        _enforce_policy(conn)
    except ssl.SSLError as exc:
        conn._mtls_refusal = exc
        raise
    conn._mtls_policy_checked = True


def _handshake(
    conn: _PinningSSLObject | _PinningSSLSocket, do_handshake: Callable[[], None]
) -> None:
    try:
        do_handshake()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        raise
    except ssl.SSLError as exc:
        _report(conn, _classify(exc))
        raise
    _run_policy_once(conn)


def _read_checked(conn: _PinningSSLObject | _PinningSSLSocket, read: Callable[[], Any]) -> Any:
    if conn._mtls_refusal is not None:
        raise conn._mtls_refusal
    data = read()
    # version() is None until SSL_is_init_finished(); the read may have just finished the
    # handshake, and its data is returned only if the check passes.
    if conn.version() is not None:
        _run_policy_once(conn)
    return data


class _PinningSSLObject(ssl.SSLObject):
    # SSL_read and SSL_write finish a pending handshake themselves ("implicit handshake",
    # https://docs.openssl.org/3.0/man3/SSL_read/), so they are guarded too: read returns
    # nothing before the check passed, write sends nothing before it ran. Once it passed,
    # the cost is one attribute test per call.
    _mtls_policy_checked: bool = False
    _mtls_refusal: ssl.SSLError | None = None
    _mtls_outgoing: ssl.MemoryBIO | None = None

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, **kwargs: Any) -> Any:
        # SSLContext.wrap_bio() builds every SSLObject here (CPython 3.7+, Lib/ssl.py). The
        # outgoing BIO is kept for the refusal path only (_refuse).
        conn = super()._create(incoming, outgoing, **kwargs)  # type: ignore[misc]
        conn._mtls_outgoing = outgoing
        return conn

    def do_handshake(self) -> None:
        _handshake(self, super().do_handshake)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        if self._mtls_policy_checked:
            return super().read(len, buffer)
        return _read_checked(self, lambda: super(_PinningSSLObject, self).read(len, buffer))

    def write(self, data: Any) -> int:
        if not self._mtls_policy_checked:
            # Finish the handshake, and the check, before a byte is encrypted; raises
            # SSLWantReadError exactly as an early write() would.
            self.do_handshake()
        return super().write(data)


class _PinningSSLSocket(ssl.SSLSocket):
    # CPython 3.11 Lib/ssl.py: recv and recv_into call self.read(); send calls
    # self._sslobj.write() directly, and sendall and sendfile call self.send(). Guarding
    # read, write and send covers them all, as for _PinningSSLObject.
    _mtls_policy_checked: bool = False
    _mtls_refusal: ssl.SSLError | None = None

    def do_handshake(self, block: bool = False) -> None:
        _handshake(self, lambda: super(_PinningSSLSocket, self).do_handshake(block))

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        if self._mtls_policy_checked:
            return super().read(len, buffer)
        return _read_checked(self, lambda: super(_PinningSSLSocket, self).read(len, buffer))

    def write(self, data: Any) -> int:
        if not self._mtls_policy_checked:
            self._handshake_before_sending()
        return super().write(data)

    def send(self, data: Any, flags: int = 0) -> int:
        if not self._mtls_policy_checked:
            self._handshake_before_sending()
        return super().send(data, flags)

    def _handshake_before_sending(self) -> None:
        # Without an SSL object (closed, unwrapped, or not connected yet) the stdlib call
        # raises or sends in clear, as it would without us.
        if getattr(self, "_sslobj", None) is not None:
            self.do_handshake()


PinningContext.sslobject_class = _PinningSSLObject
PinningContext.sslsocket_class = _PinningSSLSocket


def _harden(context: ssl.SSLContext) -> None:
    # RFC 7540 §9.2 and RFC 8996: nothing below TLS 1.2.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # RFC 7540 §9.2.1 (CRIME): no TLS compression. Renegotiation could swap the peer
    # certificate after our post-handshake pin check, so refuse it outright.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(AEAD_CIPHERS)


def _read_pem_certs(path: PathLike, what: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {os.fspath(path)}: {exc.strerror}") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigurationError(f"{what} {os.fspath(path)} holds no PEM certificate") from exc
    return certs


def load_client_ca(
    ca_files: Sequence[PathLike], crl_files: Sequence[PathLike] = ()
) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList]]:
    """Read and cross-check client CA bundles and their CRLs.

    OpenSSL's ``VERIFY_CRL_CHECK_LEAF`` rejects *every* client whose issuing CA has no CRL
    ("unable to get certificate CRL"); this turns that trap into a start-up error.

    Returns:
        The CA certificates and the CRLs.

    Raises:
        ConfigurationError: unreadable or empty files, a CRL whose signature no CA verifies,
            an expired CRL, or (when CRLs are given) any client CA without a CRL, whether
            it issues client certificates or only intermediate CAs.
    """
    if not ca_files:
        raise ConfigurationError("no client CA configured: mTLS needs client_ca")
    cas = [cert for path in ca_files for cert in _read_pem_certs(path, "client CA bundle")]
    crls: list[x509.CertificateRevocationList] = []
    for path in crl_files:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read CRL {os.fspath(path)}: {exc.strerror}") from exc
        try:
            crl = (
                x509.load_pem_x509_crl(data)
                if b"-----BEGIN" in data
                else x509.load_der_x509_crl(data)
            )
        except ValueError as exc:
            raise ConfigurationError(f"{os.fspath(path)} is not a CRL") from exc
        issuers = [ca for ca in cas if ca.subject == crl.issuer]
        if not any(crl.is_signature_valid(ca.public_key()) for ca in issuers):  # type: ignore[arg-type]
            raise ConfigurationError(
                f"CRL {os.fspath(path)} is not signed by any client CA "
                f"(issuer {crl.issuer.rfc4514_string()!r})"
            )
        next_update = crl.next_update_utc
        if next_update is not None and next_update < dt.datetime.now(dt.UTC):
            raise ConfigurationError(
                f"CRL {os.fspath(path)} expired at {next_update:%Y-%m-%d %H:%M} UTC; "
                "OpenSSL would reject every client"
            )
        crls.append(crl)
    if crls:
        covered = {crl.issuer for crl in crls}
        # Every CA, not only those that look like leaf issuers: a root that signs an
        # intermediate may also issue client certificates itself, and those would all fail
        # at runtime. Whether a CA issues leaves cannot be told from the bundle, so each CA
        # needs a CRL (an empty one for a CA that revoked nothing).
        for ca in cas:
            if ca.subject not in covered:
                raise ConfigurationError(
                    f"client CA {ca.subject.rfc4514_string()!r} has no CRL: with CRL checking "
                    "on, OpenSSL rejects every client certificate it issues directly, so "
                    "every CA in the client CA bundle needs one; add its CRL"
                )
    return cas, crls


def create_server_context(
    *,
    certfile: PathLike,
    keyfile: PathLike,
    client_ca: Sequence[PathLike],
    crl: Sequence[PathLike] = (),
    peer_policy: PeerPolicy | None,
    key_password: bytes | None = None,
    alpn_protocols: Sequence[str] = DEFAULT_ALPN,
    on_refusal: RefusalHook | None = None,
) -> PinningContext:
    """Build the receiver's context: TLS ≥ 1.2, client certificates required and pinned.

    Args:
        certfile: server certificate chain (PEM, leaf first).
        keyfile: server private key (PEM).
        client_ca: PEM bundles of the CAs that issue client certificates.
        crl: CRLs (PEM or DER) of those CAs; every CA in ``client_ca`` then needs one.
        peer_policy: pins and identity rules; ``None`` admits any CA-verified client.
        key_password: passphrase of an encrypted ``keyfile``.
        alpn_protocols: offered ALPN protocols (HTTP/2 first).
        on_refusal: hook called for each refused handshake.

    Raises:
        ConfigurationError: unreadable files, a key that does not match the certificate,
            a CRL problem (see :func:`load_client_ca`).
    """
    cas, crls = load_client_ca(client_ca, crl)
    context = PinningContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    # No session tickets: they would carry the session outside our control. This does not
    # stop resumption: OpenSSL's server session-ID cache stays on (Python cannot turn it
    # off), and a resumed TLS 1.2 session skips chain and CRL verification. _check_resumed
    # re-checks such a leaf against `revoked` and its expiry; the pins are re-checked too.
    context.options |= ssl.OP_NO_TICKET | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.num_tickets = 0
    _load_cert_chain(context, certfile, keyfile, key_password)
    context.load_verify_locations(
        cadata="".join(ca.public_bytes(serialization.Encoding.PEM).decode("ascii") for ca in cas)
    )
    if crls:
        _load_crls(context, crls)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    # The whole point: a client without a certificate from client_ca never completes the
    # handshake (hypercorn's own context defaults to CERT_NONE).
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(list(alpn_protocols))
    context.peer_policy = peer_policy
    context.on_refusal = on_refusal
    context.description = ", ".join(os.fspath(p) for p in client_ca)
    context.revoked = frozenset((crl.issuer, entry.serial_number) for crl in crls for entry in crl)
    return context


def _load_crls(context: ssl.SSLContext, crls: Sequence[x509.CertificateRevocationList]) -> None:
    # load_verify_locations(cadata=...) reads certificates only and silently drops CRLs;
    # only the file lookup (X509_load_cert_crl_file) loads CRLs into the store.
    pem = b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)
    with tempfile.TemporaryDirectory(prefix="mtls-hooks-crl-") as tmp:
        path = os.path.join(tmp, "crls.pem")
        with open(path, "wb") as handle:
            handle.write(pem)
        context.load_verify_locations(cafile=path)


def _load_cert_chain(
    context: ssl.SSLContext, certfile: PathLike, keyfile: PathLike, password: bytes | None
) -> None:
    for path, what in ((certfile, "certificate"), (keyfile, "private key")):
        if not os.access(path, os.R_OK):
            raise ConfigurationError(f"cannot read {what} {os.fspath(path)}")
    try:
        context.load_cert_chain(certfile, keyfile, password=password or (lambda: b""))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc).upper():
            raise ConfigurationError(
                f"private key {os.fspath(keyfile)} does not match certificate {os.fspath(certfile)}"
            ) from exc
        text = str(exc).upper()
        # OpenSSL 3 reports a wrong passphrase on an encrypted PEM key as a bare "PEM lib".
        if (
            "BAD_DECRYPT" in text
            or "BAD PASSWORD" in text
            or ("PEM LIB" in text and b"ENCRYPTED" in Path(keyfile).read_bytes())
        ):
            raise ConfigurationError(f"wrong passphrase for {os.fspath(keyfile)}") from exc
        raise ConfigurationError(
            f"cannot load {os.fspath(certfile)} / {os.fspath(keyfile)}: {exc.reason or exc}"
        ) from exc


@contextlib.contextmanager
def _pkcs12_as_pem(data: bytes, password: bytes | None) -> Iterator[tuple[str, str, bytes]]:
    """Unpack PKCS#12 into temporary PEM files, the key re-encrypted with a one-time password.

    The stdlib loads certificates only from files; the key never touches disk in clear.
    """
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        raise ConfigurationError("cannot open PKCS#12: wrong passphrase or corrupt file") from exc
    if key is None or cert is None:
        raise ConfigurationError("PKCS#12 file holds no private key and certificate")
    one_time = secrets.token_bytes(32)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(one_time),
    )
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *extra])
    with tempfile.TemporaryDirectory(prefix="mtls-hooks-") as tmp:  # created 0700
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, blob in ((cert_path, chain_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
        yield cert_path, key_path, one_time


def create_client_context(
    *,
    ca_file: PathLike | None = None,
    certfile: PathLike | None = None,
    keyfile: PathLike | None = None,
    key_password: bytes | None = None,
    pkcs12_file: PathLike | None = None,
    pkcs12_data: bytes | None = None,
    server_policy: PeerPolicy | None = None,
    alpn_protocols: Sequence[str] = ("http/1.1",),
) -> PinningContext:
    """Build a sender's context: verifies the receiver, presents a client certificate.

    Args:
        ca_file: PEM bundle trusted for the receiver; ``None`` uses the system store.
        certfile: client certificate chain (PEM). Give it with ``keyfile``, or give PKCS#12.
        keyfile: client private key (PEM, optionally encrypted).
        key_password: passphrase of the key or of the PKCS#12 file.
        pkcs12_file: a PKCS#12 bundle with key and certificate chain.
        pkcs12_data: the same, already in memory.
        server_policy: pins for the receiver's certificate, checked in the handshake.
        alpn_protocols: ALPN offer, ``("h2", "http/1.1")`` for HTTP/2.

    Raises:
        ConfigurationError: unreadable files, wrong passphrase, mismatched key.
    """
    context = PinningContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED on
    _harden(context)
    if ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _read_pem_certs(ca_file, "CA bundle")
        context.load_verify_locations(cafile=os.fspath(ca_file))
        context.description = os.fspath(ca_file)
    if pkcs12_file is not None or pkcs12_data is not None:
        if pkcs12_data is None:
            try:
                pkcs12_data = Path(pkcs12_file).read_bytes()  # type: ignore[arg-type]
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read PKCS#12 {pkcs12_file}: {exc.strerror}"
                ) from exc
        with _pkcs12_as_pem(pkcs12_data, key_password) as (cert_path, key_path, password):
            _load_cert_chain(context, cert_path, key_path, password)
    elif certfile is not None:
        _load_cert_chain(context, certfile, keyfile or certfile, key_password)
    context.set_alpn_protocols(list(alpn_protocols))
    context.peer_policy = server_policy
    return context
