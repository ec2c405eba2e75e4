"""Webhook endpoint settings: option names, ``app.config`` keys, and the compiled checks.

An endpoint's options are merged from five layers, most specific last (the later wins)::

    built-in defaults < MTLS_HOOKS_<OPTION> < WebhookReceiver(**options)
                      < MTLS_HOOKS_ENDPOINTS[name][option] < receiver.endpoint(name, **options)

where ``MTLS_HOOKS_<OPTION>`` is the ``app.config`` key, or else the environment variable
(except ``PINS`` and ``ALLOW``: in the environment those are the server's handshake rules).

Everything a request needs is computed once here (parsed keys, policy, networks, credential
bytes), so the request path does no configuration lookups, parsing or regex compiles.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias, TypedDict

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._events import EventTypeExtractor, default_event_type
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.core._policy import PeerPolicy
from mtls_hooks.core._settings_names import CONFIG_PREFIX
from mtls_hooks.core._signing import Verifier, VerifyKey, parse_key
from mtls_hooks.core._suggest import did_you_mean
from mtls_hooks.stores._ratelimit import Rate, parse_rate

__all__ = [
    "CONFIG_PREFIX",
    "EndpointOptions",
    "EndpointSettings",
    "compile_endpoint",
    "merge_options",
]

_MAX_CACHED_VERDICTS: Final = 1024
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class EndpointOptions(TypedDict, total=False):
    """Per-endpoint options; each also has an ``app.config`` key ``MTLS_HOOKS_<NAME>``.

    Keys:
        keys: trusted ``whsec_`` secrets and/or ``whpk_`` public keys (several for rotation).
        tolerance_s: allowed clock distance of ``webhook-timestamp``, past and future.
        pins: SPKI pins or certificate fingerprints admitted on this endpoint.
        allow: identity rules (``uri:spiffe://td/path/*``, ``dns:``, ``email:``, ``subject:``).
        require_peer: refuse requests without a verified client certificate (403).
        ip_allow: source addresses or CIDR networks; never sufficient alone (addresses are
            shared, NATed and spoofable on the path): it narrows, mTLS and signatures decide.
        basic_auth: ``(username, password)`` that the ``Authorization: Basic`` header must carry.
        max_body_bytes: larger bodies are refused with 413.
        content_types: accepted media types (parameters such as ``charset`` are ignored).
        body_timeout_s: how long the body may take to arrive (408 after that).
        event_type: maps the parsed JSON payload to the event type.
        rate_limit: ``"100/min"``: each client identity (SPKI pin) may send that many at once,
            refilled at that rate; over it, 429 with ``Retry-After``. ``None``: no limit.
        rate_limit_per_endpoint: one bucket per identity *and endpoint*; by default an
            identity has one bucket across every endpoint that sets a limit.
        quart_request: serve this endpoint through Quart's request machinery, for handlers
            that read ``quart.request`` (or need request hooks): by default a webhook is
            handled on the lean ASGI path (``receiver/_asgi.py``), at about half the cost.
        mode: ``"direct"``: the handler runs while the sender waits, its outcome is the
            answer. ``"inbox"``: once every check passed the event is stored durably
            (``MTLS_HOOKS_INBOX_URL``) and answered 202; handlers run from the inbox, with
            retries and a dead letter (``mtls_hooks.inbox``).
    """

    keys: Sequence[str | VerifyKey]
    tolerance_s: float
    pins: Sequence[str]
    allow: Sequence[str]
    require_peer: bool
    ip_allow: Sequence[str]
    basic_auth: tuple[str, str] | None
    max_body_bytes: int
    content_types: Sequence[str]
    body_timeout_s: float
    event_type: EventTypeExtractor
    rate_limit: str | Rate | None
    rate_limit_per_endpoint: bool
    quart_request: bool
    mode: str


ENDPOINT_DEFAULTS: Final[Mapping[str, Any]] = {
    "keys": (),
    "tolerance_s": 300.0,
    "pins": (),
    "allow": (),
    "require_peer": True,
    "ip_allow": (),
    "basic_auth": None,
    "max_body_bytes": 1024 * 1024,
    "content_types": ("application/json",),
    "body_timeout_s": 30.0,
    "event_type": default_event_type,
    "rate_limit": None,
    "rate_limit_per_endpoint": False,
    "quart_request": False,
    "mode": "direct",
}
MODES: Final = ("direct", "inbox")
OPTION_NAMES: Final = tuple(EndpointOptions.__annotations__)
_SEQUENCE_OPTIONS: Final = frozenset({"keys", "pins", "allow", "ip_allow", "content_types"})
_NUMBER_OPTIONS: Final = frozenset({"tolerance_s", "max_body_bytes", "body_timeout_s"})


def check_option_names(options: Mapping[str, Any], where: str) -> None:
    """Refuse unknown option names, naming the closest valid one.

    Raises:
        ConfigurationError: on the first unknown name.
    """
    for name in options:
        if name not in ENDPOINT_DEFAULTS:
            hint = did_you_mean(str(name), OPTION_NAMES, cutoff=0.5)
            raise ConfigurationError(f"unknown endpoint option {name!r} in {where}{hint}")


def _coerce_config(name: str, value: Any, key: str) -> Any:
    """Accept the string forms environment-fed ``app.config`` values arrive in."""
    if isinstance(value, str):
        if name in _SEQUENCE_OPTIONS:
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if name in _NUMBER_OPTIONS:
            try:
                return float(value) if name.endswith("_s") else int(value)
            except ValueError as exc:
                raise ConfigurationError(f"{key} must be a number, got {value!r}") from exc
        if name in ("require_peer", "rate_limit_per_endpoint", "quart_request"):
            return value.strip().lower() not in ("0", "false", "no", "off")
        if name == "mode":
            return value.strip().lower()
    return value


def merge_options(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Merge option layers, least specific first, over the built-in defaults.

    Args:
        layers: ``(description, options)`` pairs; a description starting with
            ``MTLS_HOOKS_`` marks ``app.config`` values, whose strings are coerced.

    Raises:
        ConfigurationError: an unknown option name or an uncoercible config string.
    """
    merged = dict(ENDPOINT_DEFAULTS)
    for where, options in layers:
        check_option_names(options, where)
        from_config = where.startswith(CONFIG_PREFIX)
        for name, value in options.items():
            merged[name] = (
                _coerce_config(name, value, f"{where}[{name!r}]") if from_config else value
            )
    return merged


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    """One endpoint, compiled: everything the request path reads, precomputed.

    Attributes:
        name: the endpoint name (in logs, events and dedupe keys).
        path: the URL rule it is served on.
        verifier: the signature and timestamp verifier holding its keys.
        policy: the identities admitted, or ``None`` for any CA-verified peer.
        require_peer: whether a request without a client certificate is refused.
        networks: allowed source networks; empty means any.
        basic_auth: expected ``(username, password)`` as UTF-8 bytes, or ``None``.
        max_body_bytes: the body size cap.
        content_types: accepted media types, lowercase.
        body_timeout_s: the body read deadline.
        event_type: the event-type extractor.
        rate_limit: the limit per client identity, or ``None``.
        rate_limit_per_endpoint: whether the identity's bucket is this endpoint's own.
        quart_request: whether requests go through Quart's request machinery (not the lean
            path).
        mode: ``"direct"`` or ``"inbox"`` (stored, answered 202, handled from the inbox).
    """

    name: str
    path: str
    verifier: Verifier
    policy: PeerPolicy | None
    require_peer: bool
    networks: tuple[IPNetwork, ...]
    # Out of the repr: settings are printed in debuggers, logs and error reports.
    basic_auth: tuple[bytes, bytes] | None = field(repr=False)
    max_body_bytes: int
    content_types: frozenset[str]
    body_timeout_s: float
    event_type: EventTypeExtractor
    rate_limit: Rate | None = None
    rate_limit_per_endpoint: bool = False
    quart_request: bool = False
    mode: str = "direct"
    # Verdicts per certificate fingerprint: the policy is fixed and a sender reuses its
    # certificate for every request, so the rule walk (~2 µs) runs once per certificate.
    _verdicts: dict[str, tuple[str, str] | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    def identity_refusal(self, peer: PeerIdentity | None) -> tuple[str, str] | None:
        """Return ``(reason, detail)`` when ``peer`` may not use this endpoint, else ``None``.

        The reason codes are those of :func:`mtls_hooks.receiver._authz.require_peer`.
        """
        if peer is None:
            if self.require_peer or self.policy is not None:
                return (
                    "no-client-certificate",
                    "no verified client certificate: this endpoint needs mTLS "
                    "(serve it with mtls_hooks, which passes the peer certificate to the app)",
                )
            return None
        if self.policy is None:
            return None
        verdicts = self._verdicts
        try:
            return verdicts[peer.fingerprint]
        except KeyError:
            pass
        verdict = (
            None
            if self.policy.allows(peer)
            else (
                "identity-not-allowed",
                f"client {peer.subject!r} ({peer.spki_pin}) is not allowed on this endpoint",
            )
        )
        if len(verdicts) >= _MAX_CACHED_VERDICTS:
            verdicts.clear()  # bounded: a flood of distinct certificates cannot grow it
        verdicts[peer.fingerprint] = verdict
        return verdict

    def address_allowed(self, client: Any) -> bool:
        """True when the ASGI ``scope["client"]`` address is inside an allowed network."""
        if not self.networks:
            return True
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except (ValueError, TypeError, IndexError):
            return False
        # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def basic_auth_ok(self, authorization: str | None) -> bool:
        """Check an ``Authorization`` header against the expected Basic credentials.

        Username and password are both compared in constant time and both always compared,
        so timing reveals neither which part was wrong nor how much of it matched. Their
        SHA-256 digests are compared, not the values: ``compare_digest`` takes time by the
        length of its input, which would reveal the expected password's length.
        """
        expected = self.basic_auth
        if expected is None:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = binascii.a2b_base64(token.strip(), strict_mode=True)
        except (binascii.Error, ValueError):
            return False
        username, sep, password = decoded.partition(b":")
        user_ok = hmac.compare_digest(_sha256(username), _sha256(expected[0]))
        password_ok = hmac.compare_digest(_sha256(password), _sha256(expected[1]))
        return bool(sep) and user_ok and password_ok


def _sha256(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{what} must be a list of strings")
    items = tuple(value)
    if not all(isinstance(item, str) for item in items):
        raise ConfigurationError(f"{what} must be a list of strings")
    return items


def _keys(value: Any, where: str) -> tuple[VerifyKey, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{where}: keys must be a list of whsec_/whpk_ keys")
    keys: list[Any] = [parse_key(item) if isinstance(item, str) else item for item in value]
    if not keys:
        raise ConfigurationError(
            f"{where}: no signing keys: set keys=[...] or MTLS_HOOKS_KEYS (whsec_/whpk_)"
        )
    return tuple(keys)


def _networks(value: Any, where: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in _strings(value, f"{where}: ip_allow"):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError as exc:
            raise ConfigurationError(f"{where}: ip_allow entry {item!r}: {exc}") from exc
    return tuple(networks)


def _basic(value: Any, where: str) -> tuple[bytes, bytes] | None:
    if value is None:
        return None
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(part, str) for part in value)
    ):
        raise ConfigurationError(f"{where}: basic_auth must be (username, password)")
    username, password = value
    if not username or ":" in username or not password:
        # RFC 7617 §2: the user-id cannot contain ':'; empty credentials would be trivial.
        raise ConfigurationError(
            f"{where}: basic_auth needs a non-empty username without ':' and a password"
        )
    return username.encode("utf-8"), password.encode("utf-8")


def _positive(value: Any, name: str, where: str, *, integer: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigurationError(
            f"{where}: {name} must be a {'n integer' if integer else ' number'}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{where}: {name} must be > 0, got {value!r}")
    return value


def compile_endpoint(name: str, path: str, options: Mapping[str, Any]) -> EndpointSettings:
    """Validate merged options and precompute everything the request path needs.

    Raises:
        ConfigurationError: any invalid option, named with its endpoint.
    """
    where = f"endpoint {name!r}"
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigurationError(f"{where}: path must start with '/', got {path!r}")
    pins = _strings(options["pins"], f"{where}: pins")
    allow = _strings(options["allow"], f"{where}: allow")
    policy = PeerPolicy.from_rules(pins=pins, allow=allow) if pins or allow else None
    try:
        verifier = Verifier(_keys(options["keys"], where), tolerance_s=options["tolerance_s"])
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc
    content_types = frozenset(
        t.strip().lower() for t in _strings(options["content_types"], f"{where}: content_types")
    )
    if not content_types:
        raise ConfigurationError(f"{where}: content_types must not be empty")
    extractor = options["event_type"]
    if not callable(extractor):
        raise ConfigurationError(f"{where}: event_type must be callable")
    require_peer = options["require_peer"]
    if not isinstance(require_peer, bool):
        raise ConfigurationError(f"{where}: require_peer must be True or False")
    per_endpoint = options["rate_limit_per_endpoint"]
    if not isinstance(per_endpoint, bool):
        raise ConfigurationError(f"{where}: rate_limit_per_endpoint must be True or False")
    quart_request = options["quart_request"]
    if not isinstance(quart_request, bool):
        raise ConfigurationError(f"{where}: quart_request must be True or False")
    mode = options["mode"]
    if mode not in MODES:
        hint = did_you_mean(str(mode), MODES, cutoff=0.5)
        raise ConfigurationError(f"{where}: mode must be 'direct' or 'inbox', got {mode!r}{hint}")
    try:
        rate_limit = parse_rate(options["rate_limit"])
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc
    return EndpointSettings(
        name=name,
        path=path,
        verifier=verifier,
        policy=policy,
        require_peer=require_peer,
        networks=_networks(options["ip_allow"], where),
        basic_auth=_basic(options["basic_auth"], where),
        max_body_bytes=_positive(options["max_body_bytes"], "max_body_bytes", where, integer=True),
        content_types=content_types,
        body_timeout_s=float(_positive(options["body_timeout_s"], "body_timeout_s", where)),
        event_type=extractor,
        rate_limit=rate_limit,
        rate_limit_per_endpoint=per_endpoint,
        quart_request=quart_request,
        mode=mode,
    )
