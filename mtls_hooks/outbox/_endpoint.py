"""Outbox endpoints: records in the queue's store, holding secrets only by reference.

An :class:`Endpoint` names where and how to deliver: the URL, the client certificate (file
paths), the signing keys (``file:/path`` with one key per line, or ``env:NAME``), the
receiver's pins, a :class:`RetrySettings`, a rate limit, FIFO ordering and a circuit
breaker window. Its record holds paths and variable names, never a key or a passphrase: the
database, its rows, the CLI and the logs never see one, and a worker re-reads the files when
they change, so renewed certificates and rotated keys apply without a restart.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tenacity import stop_after_attempt

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._suggest import did_you_mean
from mtls_hooks.sender._results import redact_url
from mtls_hooks.sender._retry import RetryPolicy, wait_backoff, wait_retry_after

__all__ = ["Endpoint", "OutboxEndpoint", "RetrySettings", "read_key_refs"]

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What a key pasted where a reference belongs looks like: refused, never stored.
_KEY_PREFIXES: Final = ("whsec_", "whsk_", "whpk_", "-----BEGIN")


def _number(
    name: str, value: Any, *, minimum: float = 0.0, positive: bool = False, allow_none: bool = False
) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (positive and value <= 0):
        bound = "> 0" if positive else f">= {minimum:g}"
        raise ConfigurationError(f"{name} must be {bound}, got {value!r}")
    return value


@dataclass(frozen=True)
class RetrySettings:
    """A :class:`~mtls_hooks.RetryPolicy` an endpoint record can store.

    The defaults are :meth:`RetryPolicy.default`'s: up to 8 tries within 24 h, waiting about
    5 s, 30 s, 3 min, 18 min, 1.8 h, 8 h and 8 h (±20 %), or ``Retry-After`` up to 1 h.
    """

    max_attempts: int = 8
    initial_wait_s: float = 5.0
    multiplier: float = 6.0
    max_wait_s: float = 8 * 3600.0
    jitter: float = 0.2
    max_retry_after_s: float = 3600.0
    attempt_timeout_s: float = 15.0
    deadline_s: float | None = 24 * 3600.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigurationError(f"max_attempts must be an integer, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        _number("initial_wait_s", self.initial_wait_s, minimum=0.0)
        _number("multiplier", self.multiplier, minimum=0.0)
        _number("max_wait_s", self.max_wait_s, minimum=0.0)
        _number("max_retry_after_s", self.max_retry_after_s, minimum=0.0)
        _number("attempt_timeout_s", self.attempt_timeout_s, positive=True)
        _number("deadline_s", self.deadline_s, positive=True, allow_none=True)
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be within [0, 1], got {self.jitter!r}")

    def policy(self) -> RetryPolicy:
        """The tenacity policy these settings describe (the worker applies its deadline)."""
        return RetryPolicy(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_retry_after(
                wait_backoff(
                    initial_s=self.initial_wait_s,
                    multiplier=self.multiplier,
                    max_s=self.max_wait_s,
                    jitter=self.jitter,
                ),
                max_s=self.max_retry_after_s,
            ),
            attempt_timeout_s=self.attempt_timeout_s,
            deadline_s=self.deadline_s,
        )


@dataclass(frozen=True)
class Endpoint:
    """Where and how the outbox delivers; see the module docstring.

    Attributes:
        name: the endpoint's name, used by ``enqueue`` and the CLI.
        url: the receiver's ``https://`` URL.
        ca_file: the CA bundle that verifies the receiver; ``None`` for the system store.
        cert_file: our client certificate chain (PEM).
        key_file: its private key (PEM).
        key_password_env: the environment variable holding the key's passphrase.
        signing_keys: references: ``file:/path`` (one ``whsec_``/``whsk_`` key per line,
            several during a rotation) or ``env:NAME``.
        pins: the receiver's SPKI pins or certificate fingerprints.
        retry: the retry schedule.
        rate_limit_per_s: deliveries per second across every worker; ``None`` for no limit.
        rate_burst: how many deliveries may go at once after a quiet spell.
        fifo: deliver this endpoint's messages one at a time, in enqueue order.
        breaker_window_s: disable the endpoint when every delivery failed for this long;
            ``None`` for no circuit breaker.
    """

    name: str
    url: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password_env: str | None = None
    signing_keys: tuple[str, ...] = ()
    pins: tuple[str, ...] = ()
    retry: RetrySettings = field(default_factory=RetrySettings)
    rate_limit_per_s: float | None = None
    rate_burst: float = 1.0
    fifo: bool = False
    breaker_window_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigurationError(
                f"endpoint name must be 1-100 letters, digits, '.', '_' or '-', got {self.name!r}"
            )
        if not isinstance(self.url, str) or not self.url.startswith("https://"):
            raise ConfigurationError(f"endpoint {self.name!r}: url must be https://...")
        object.__setattr__(self, "signing_keys", tuple(self.signing_keys))
        object.__setattr__(self, "pins", tuple(self.pins))
        if not self.signing_keys:
            raise ConfigurationError(
                f"endpoint {self.name!r} needs signing_keys: file:/path or env:NAME"
            )
        for ref in self.signing_keys:
            _check_ref(self.name, ref)
        if self.key_password_env is not None and not _ENV_NAME.fullmatch(self.key_password_env):
            raise ConfigurationError(
                f"endpoint {self.name!r}: key_password_env must name an environment variable"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigurationError(
                f"endpoint {self.name!r}: give cert_file and key_file together"
            )
        for path_field in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, path_field)
            if value is not None and (
                not isinstance(value, str) or value.startswith(_KEY_PREFIXES)
            ):
                raise ConfigurationError(
                    f"endpoint {self.name!r}: {path_field} must be a file path, not its content"
                )
        _number("rate_limit_per_s", self.rate_limit_per_s, positive=True, allow_none=True)
        _number("rate_burst", self.rate_burst, minimum=1.0)
        _number("breaker_window_s", self.breaker_window_s, positive=True, allow_none=True)
        if not isinstance(self.retry, RetrySettings):
            raise ConfigurationError("retry must be RetrySettings(...)")

    def to_config(self) -> dict[str, Any]:
        """The record as stored: JSON-ready, with references only."""
        config = dataclasses.asdict(self)
        del config["name"]
        config["signing_keys"] = list(self.signing_keys)
        config["pins"] = list(self.pins)
        return config

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> Endpoint:
        """Rebuild an endpoint from its stored record.

        Raises:
            ConfigurationError: an unknown key (naming the closest valid one) or a bad value.
        """
        known = {f.name for f in dataclasses.fields(cls)} - {"name"}
        retry_known = {f.name for f in dataclasses.fields(RetrySettings)}
        values = dict(config)
        for key in values:
            if key not in known:
                raise ConfigurationError(
                    f"unknown endpoint setting {key!r}{did_you_mean(key, known)}"
                )
        retry = dict(values.pop("retry", None) or {})
        for key in retry:
            if key not in retry_known:
                raise ConfigurationError(
                    f"unknown retry setting {key!r}{did_you_mean(key, retry_known)}"
                )
        values["signing_keys"] = tuple(values.get("signing_keys") or ())
        values["pins"] = tuple(values.get("pins") or ())
        try:
            return cls(name=name, retry=RetrySettings(**retry), **values)
        except TypeError as exc:
            raise ConfigurationError(f"endpoint {name!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Endpoint(name={self.name!r}, url={redact_url(self.url)!r})"


#: ``mtls_hooks.OutboxEndpoint``: the same record, named apart from the receiver's
#: ``WebhookEndpoint`` at the top level.
OutboxEndpoint = Endpoint


def _check_ref(name: str, ref: Any) -> None:
    if not isinstance(ref, str):
        raise ConfigurationError(f"endpoint {name!r}: a signing key reference must be text")
    kind, _, value = ref.partition(":")
    if ref.startswith(_KEY_PREFIXES):
        # Never echo it: it is a secret pasted where its reference belongs.
        raise ConfigurationError(
            f"endpoint {name!r}: signing keys are stored by reference (file:/path or env:NAME), "
            "never as key text"
        )
    if kind == "env" and _ENV_NAME.fullmatch(value):
        return
    if kind == "file" and value:
        return
    raise ConfigurationError(
        f"endpoint {name!r}: signing key reference {ref[:60]!r} must be file:/path or env:NAME"
    )


def read_key_refs(refs: tuple[str, ...], environ: Mapping[str, str] | None = None) -> list[str]:
    """Resolve key references to key text: every non-blank, non-comment line, in order.

    Raises:
        ConfigurationError: an unreadable file, an unset variable, or no key at all. The
            message names the reference, never its content.
    """
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    for ref in refs:
        kind, _, value = ref.partition(":")
        if kind == "env":
            text = environ.get(value)
            if text is None:
                raise ConfigurationError(f"signing key variable {value} is not set")
        else:
            try:
                with open(value, encoding="utf-8") as handle:
                    text = handle.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(
                    f"cannot read signing keys from {value!r}: {type(exc).__name__}"
                ) from exc
        for raw in text.splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                keys += line.replace(",", " ").split()
    if not keys:
        raise ConfigurationError("the signing key references hold no key")
    return keys
