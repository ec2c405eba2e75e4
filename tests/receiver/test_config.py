"""The extension the Quart way: init_app, app.config keys, precedence, typo rejection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from certs_tool import CA, IssuedCert
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.core._settings_names import ENDPOINT_OPTION_NAMES, STORE_NAMES
from mtls_hooks.receiver._endpoint import EndpointOptions
from mtls_hooks.receiver._receiver import _RECEIVER_KEYS, EXTENSION_KEY, WebhookReceiver
from mtls_hooks.stores._replay import ClaimState, MemoryDedupeStore, SQLiteDedupeStore
from tests.receiver.conftest import Sender


def make_app(**config: Any) -> Quart:
    app = Quart(__name__)
    app.config.update(config)
    return app


def test_init_app_later_registers_the_extension(sender: Sender) -> None:
    hooks = WebhookReceiver(path="/hooks")
    app = make_app(MTLS_HOOKS_KEYS=[sender.key])
    hooks.init_app(app)
    assert app.extensions[EXTENSION_KEY] is hooks
    assert isinstance(hooks.store(app), MemoryDedupeStore)
    assert any(rule.rule == "/hooks" for rule in app.url_map.iter_rules())


def test_one_receiver_serves_several_apps(sender: Sender) -> None:
    hooks = WebhookReceiver(path="/hooks")
    first = make_app(MTLS_HOOKS_KEYS=[sender.key], MTLS_HOOKS_TOLERANCE_S=60)
    second = make_app(MTLS_HOOKS_KEYS=[sender.key])
    hooks.init_app(first)
    hooks.init_app(second)
    assert hooks.settings(first, "default").verifier.tolerance_s == 60
    assert hooks.settings(second, "default").verifier.tolerance_s == 300
    assert hooks.store(first) is not hooks.store(second)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        pytest.param("MTLS_HOOKS_TOLERANCE", "MTLS_HOOKS_TOLERANCE_S", id="missing-unit"),
        pytest.param("MTLS_HOOKS_MAX_BODY_SIZE", "MTLS_HOOKS_MAX_BODY_BYTES", id="wrong-unit"),
        pytest.param("MTLS_HOOKS_SECRETS", "MTLS_HOOKS_KEYS", id="secrets"),
        pytest.param("MTLS_HOOKS_IP_ALLOWLIST", "MTLS_HOOKS_IP_ALLOW", id="allowlist"),
        pytest.param("MTLS_HOOKS_DEDUPE_PAHT", "MTLS_HOOKS_DEDUPE_PATH", id="typo"),
    ],
)
def test_unknown_config_key_names_the_closest(key: str, suggestion: str, sender: Sender) -> None:
    app = make_app(MTLS_HOOKS_KEYS=[sender.key], **{key: 1})
    with pytest.raises(ConfigurationError, match=f"unknown setting '{key}'") as info:
        WebhookReceiver(app, path="/hooks")
    if suggestion != "MTLS_HOOKS_KEYS":
        assert repr(suggestion) in str(info.value)


def test_server_settings_under_the_prefix_are_not_typos(sender: Sender) -> None:
    app = make_app(MTLS_HOOKS_KEYS=[sender.key], MTLS_HOOKS_CLIENT_CA=["ca.pem"], OTHER=1)
    hooks = WebhookReceiver(app, path="/hooks")
    assert app.extensions[EXTENSION_KEY] is hooks
    assert hooks.settings(app, "default").path == "/hooks"
    # The twin: the same app with a misspelt server key is refused.
    typo = make_app(MTLS_HOOKS_KEYS=[sender.key], MTLS_HOOKS_CLIENT_CAS=["ca.pem"])
    with pytest.raises(ConfigurationError, match="'MTLS_HOOKS_CLIENT_CA'"):
        WebhookReceiver(typo, path="/hooks")


def test_unknown_constructor_and_endpoint_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"'tolerance'.*'tolerance_s'"):
        WebhookReceiver(tolerance=5)  # type: ignore[call-arg]
    hooks = WebhookReceiver()
    with pytest.raises(ConfigurationError, match=r"'max_body'.*'max_body_bytes'"):
        hooks.endpoint("/x", max_body=5)  # type: ignore[call-arg]


def test_precedence_endpoint_over_config_endpoint_over_receiver_over_config(
    sender: Sender,
) -> None:
    app = make_app(
        MTLS_HOOKS_KEYS=[sender.key],
        MTLS_HOOKS_TOLERANCE_S="100",  # strings, as environment-fed config arrives
        MTLS_HOOKS_MAX_BODY_BYTES="1000",
        MTLS_HOOKS_CONTENT_TYPES="application/json, application/cloudevents+json",
        MTLS_HOOKS_ENDPOINTS={
            "a": {"max_body_bytes": 3000},
            "b": {"max_body_bytes": 3000},
            "c": {"path": "/from-config", "tolerance_s": 7},
        },
    )
    hooks = WebhookReceiver(max_body_bytes=2000, tolerance_s=200)
    hooks.endpoint("/a", name="a", max_body_bytes=4000)
    hooks.endpoint("/b", name="b")
    hooks.endpoint("/d", name="d")
    hooks.init_app(app)
    settings = {name: hooks.settings(app, name) for name in "abcd"}
    assert settings["a"].max_body_bytes == 4000  # endpoint code wins
    assert settings["b"].max_body_bytes == 3000  # then the endpoint's config entry
    assert settings["d"].max_body_bytes == 2000  # then the receiver's options
    assert settings["c"].verifier.tolerance_s == 7
    assert settings["c"].path == "/from-config"
    assert settings["d"].verifier.tolerance_s == 200
    assert settings["b"].content_types == {"application/json", "application/cloudevents+json"}


def test_config_only_receiver_falls_back_to_config_keys(sender: Sender) -> None:
    app = make_app(MTLS_HOOKS_KEYS=sender.key, MTLS_HOOKS_TOLERANCE_S=30)
    hooks = WebhookReceiver(app, path="/hooks")
    assert hooks.settings(app, "default").verifier.tolerance_s == 30


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({}, "no signing keys", id="no-keys"),
        pytest.param({"keys": "whsec_abc"}, "list of whsec_", id="key-not-a-list"),
        pytest.param({"keys": ["whsk_" + "A" * 43 + "="]}, "Ed25519", id="signing-key"),
        pytest.param({"keys": ["nope"]}, "unknown key format", id="junk-key"),
        pytest.param({"ip_allow": ["10.0.0.1/8"]}, "ip_allow", id="cidr-host-bits"),
        pytest.param({"basic_auth": ("a:b", "c")}, "username without ':'", id="basic-colon"),
        pytest.param({"basic_auth": ("user", "")}, "password", id="basic-empty"),
        pytest.param({"max_body_bytes": 0}, "max_body_bytes", id="zero-cap"),
        pytest.param({"max_body_bytes": 1.5}, "integer", id="fractional-cap"),
        pytest.param({"content_types": []}, "content_types", id="no-content-types"),
        pytest.param({"allow": ["spiffe:x"]}, "identity rule", id="bad-identity-rule"),
        pytest.param({"tolerance_s": -1}, "tolerance_s", id="negative-tolerance"),
        pytest.param({"require_peer": "yes"}, "require_peer", id="require-peer-type"),
        pytest.param({"event_type": "type"}, "callable", id="extractor-not-callable"),
    ],
)
def test_invalid_endpoint_options(options: dict[str, Any], message: str, sender: Sender) -> None:
    if "keys" not in options and message != "no signing keys":
        options = {"keys": [sender.key], **options}
    with pytest.raises(ConfigurationError, match=message):
        WebhookReceiver(make_app(), path="/hooks", **options)


def test_configuration_errors_never_echo_a_secret() -> None:
    secret = "whsec_c2hvcnQ="  # decodes to 5 bytes: too short
    with pytest.raises(ConfigurationError) as info:
        WebhookReceiver(make_app(), path="/hooks", keys=[secret])
    assert "c2hvcnQ" not in str(info.value)


def test_reprs_never_show_a_password_or_a_secret(sender: Sender) -> None:
    password = "s3cret-password"
    app = make_app(
        MTLS_HOOKS_KEYS=[sender.key],
        MTLS_HOOKS_BASIC_AUTH=("alice", password),
        MTLS_HOOKS_ENDPOINTS={
            "billing": {"path": "/billing", "basic_auth": ("bob", password + "-billing")}
        },
    )
    hooks = WebhookReceiver(app, path="/hooks", basic_auth=("carol", password + "-ctor"))
    shipping = hooks.endpoint("/shipping", name="shipping", keys=[sender.key])
    state = hooks._states[app]
    shown = [hooks, shipping, state, *state.endpoints.values(), hooks.store(app)]
    assert {"default", "billing", "shipping"} <= set(state.endpoints)
    assert hooks.settings(app, "billing").basic_auth == (b"bob", f"{password}-billing".encode())
    secret = sender.key.removeprefix("whsec_")
    for thing in shown:
        for text in (repr(thing), str(thing)):
            assert password not in text
            assert secret not in text


def test_duplicate_registrations_are_errors(sender: Sender) -> None:
    hooks = WebhookReceiver(make_app(MTLS_HOOKS_KEYS=[sender.key]), path="/hooks")
    hooks.on("a")(lambda event: None)
    with pytest.raises(ConfigurationError, match="already registered"):
        hooks.on("a")(lambda event: None)
    hooks.on_any(lambda event: None)
    with pytest.raises(ConfigurationError, match="fallback"):
        hooks.fallback(lambda event: None)
    with pytest.raises(ConfigurationError, match="declared twice"):
        hooks.endpoint("/hooks", name="again")
    with pytest.raises(ConfigurationError, match="non-empty"):
        hooks.on("")


def test_second_receiver_on_one_app_is_refused(sender: Sender) -> None:
    app = make_app(MTLS_HOOKS_KEYS=[sender.key])
    WebhookReceiver(app, path="/a")
    with pytest.raises(ConfigurationError, match="already has"):
        WebhookReceiver(app, path="/b")


def test_config_endpoint_needs_a_path(sender: Sender) -> None:
    app = make_app(MTLS_HOOKS_KEYS=[sender.key], MTLS_HOOKS_ENDPOINTS={"x": {}})
    with pytest.raises(ConfigurationError, match="needs a 'path'"):
        WebhookReceiver(app)


def test_dedupe_path_selects_sqlite(sender: Sender, tmp_path: Path) -> None:
    app = make_app(MTLS_HOOKS_KEYS=[sender.key], MTLS_HOOKS_DEDUPE_PATH=str(tmp_path / "d.db"))
    hooks = WebhookReceiver(app, path="/hooks")
    store = hooks.store(app)
    assert isinstance(store, SQLiteDedupeStore)
    store.close()


def test_environment_settings_are_defaults_beneath_app_config(
    sender: Sender, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTLS_HOOKS_KEYS", sender.key)
    monkeypatch.setenv("MTLS_HOOKS_DEDUPE_PATH", str(tmp_path / "env.db"))
    monkeypatch.setenv("MTLS_HOOKS_TOLERANCE_S", "60")
    monkeypatch.setenv("MTLS_HOOKS_MAX_BODY_BYTES", "2048")
    app = make_app(MTLS_HOOKS_MAX_BODY_BYTES=4096)  # app.config wins over the environment
    hooks = WebhookReceiver(app, path="/hooks", tolerance_s=30)  # and code over both
    settings = hooks.settings(app, "default")
    assert settings.verifier.tolerance_s == 30
    assert settings.max_body_bytes == 4096
    store = hooks.store(app)
    assert isinstance(store, SQLiteDedupeStore)
    store.close()
    assert (tmp_path / "env.db").exists()
    bare_app = make_app()  # keys and everything else from the environment alone
    bare = WebhookReceiver(bare_app, path="/hooks")
    assert bare.settings(bare_app, "default").verifier.tolerance_s == 60
    bare_store = bare.store(bare_app)
    assert isinstance(bare_store, SQLiteDedupeStore)
    bare_store.close()


def test_server_and_sender_variables_are_left_to_them(
    sender: Sender, monkeypatch: pytest.MonkeyPatch, certs_ca: CA, stranger_cert: IssuedCert
) -> None:
    # In the environment, PINS and ALLOW are the server's handshake rules: as endpoint
    # defaults they would widen an endpoint's own allow list (a peer matching any rule passes).
    monkeypatch.setenv("MTLS_HOOKS_PINS", "sha256/" + "A" * 43 + "=")
    monkeypatch.setenv("MTLS_HOOKS_ALLOW", "uri:spiffe://test.example/*")
    monkeypatch.setenv("MTLS_HOOKS_CLIENT_CA", "ca.pem")
    monkeypatch.setenv("MTLS_HOOKS_SECRET", sender.key)
    app = make_app(MTLS_HOOKS_KEYS=[sender.key])
    hooks = WebhookReceiver(app, path="/hooks")
    hooks.endpoint("/billing", name="billing", allow=["uri:spiffe://test.example/billing"])
    assert hooks.settings(app, "default").policy is None
    # The environment's ALLOW would admit every test.example workload: it must not widen
    # billing's own rule, nor put a rule on the default endpoint.
    billing = hooks.settings(app, "billing")
    outsider = PeerIdentity.from_certificate(stranger_cert.certificate)
    insider = PeerIdentity.from_certificate(
        certs_ca.issue_client("billing", uris=["spiffe://test.example/billing"]).certificate
    )
    assert billing.identity_refusal(insider) is None
    refusal = billing.identity_refusal(outsider)
    assert refusal is not None
    assert refusal[0] == "identity-not-allowed"
    assert hooks.settings(app, "default").identity_refusal(outsider) is None


def test_unknown_environment_variable_names_the_closest(
    sender: Sender, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTLS_HOOKS_DEDUPE_PAHT", "/tmp/d.db")
    app = make_app(MTLS_HOOKS_KEYS=[sender.key])
    with pytest.raises(ConfigurationError) as info:
        WebhookReceiver(app, path="/hooks")
    assert str(info.value) == (
        "unknown environment setting 'MTLS_HOOKS_DEDUPE_PAHT' "
        "(did you mean 'MTLS_HOOKS_DEDUPE_PATH'?)"
    )


def test_receiver_names_are_the_endpoint_options_and_store_settings() -> None:
    # The light names module the server imports must list exactly what the receiver reads.
    assert tuple(EndpointOptions.__annotations__) == ENDPOINT_OPTION_NAMES
    assert tuple(name.lower() for name in _RECEIVER_KEYS) == STORE_NAMES


def test_endpoint_declared_after_init_app_is_served(sender: Sender) -> None:
    app = make_app(MTLS_HOOKS_KEYS=[sender.key])
    hooks = WebhookReceiver(app)
    hooks.endpoint("/late", name="late")
    assert any(rule.rule == "/late" for rule in app.url_map.iter_rules())


def test_handlers_for_an_unknown_endpoint_are_refused(sender: Sender) -> None:
    hooks = WebhookReceiver()
    hooks.endpoint("/billing", name="billing")
    hooks.on("a", endpoint="biling")(lambda event: None)
    with pytest.raises(ConfigurationError, match=r"'biling'.*'billing'"):
        hooks.init_app(make_app(MTLS_HOOKS_KEYS=[sender.key]))
    initialised = WebhookReceiver(make_app(MTLS_HOOKS_KEYS=[sender.key]), path="/x", name="x")
    with pytest.raises(ConfigurationError, match="unknown endpoint"):
        initialised.on("a", endpoint="y")(lambda event: None)


class Clock:
    """Seconds that move only when the test says so (the store's injected clock)."""

    def __init__(self) -> None:
        self.now_s = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("source", ["app.config", "environment"])
async def test_dedupe_settings_reach_the_store(
    sender: Sender, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, kind: str
) -> None:
    settings = {
        "MTLS_HOOKS_RETENTION_S": "3600",
        "MTLS_HOOKS_LEASE_S": "30",
        "MTLS_HOOKS_DEDUPE_MAX_ENTRIES": "2",
    }
    if kind == "sqlite":
        settings["MTLS_HOOKS_DEDUPE_PATH"] = str(tmp_path / "settings.db")
    app = make_app(MTLS_HOOKS_KEYS=[sender.key])
    if source == "environment":
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
    else:
        app.config.update(settings)
    hooks = WebhookReceiver(app, path="/hooks", require_peer=False)
    runs: list[str] = []
    hooks.on_any(lambda event: runs.append(event.id))
    store = hooks.store(app)
    assert isinstance(store, SQLiteDedupeStore if kind == "sqlite" else MemoryDedupeStore)
    assert (store.retention_s, store.lease_s) == (3600.0, 30.0)
    clock = Clock()
    store._clock = clock  # the seam the stores take in their constructors
    if isinstance(store, MemoryDedupeStore):
        assert store.max_entries == 2

    async with app.test_app() as test_app:
        client = test_app.test_client()

        async def deliver(webhook_id: str) -> int:
            body, headers = sender.request(webhook_id=webhook_id)
            response = await client.post("/hooks", data=body, headers=headers)
            assert response.status_code == 204
            return len(runs)

        # Retention: remembered for 3600 s, not a second longer.
        assert await deliver("msg_retained") == 1
        clock.now_s += 3599
        assert await deliver("msg_retained") == 1
        clock.now_s += 2
        assert await deliver("msg_retained") == 2
        # Lease: an abandoned claim blocks its id for 30 s.
        assert await store.claim("default msg_abandoned") is ClaimState.CLAIMED
        clock.now_s += 29
        assert await store.claim("default msg_abandoned") is ClaimState.IN_FLIGHT
        clock.now_s += 2
        assert await store.claim("default msg_abandoned") is ClaimState.CLAIMED
        if isinstance(store, MemoryDedupeStore):
            # Two entries at most: a third id pushes the oldest out early.
            evicted = store.evicted
            for webhook_id in ("msg_one", "msg_two", "msg_three"):
                await deliver(webhook_id)
            assert store.evicted > evicted
            assert len(store) == 2
            await deliver("msg_one")
            assert runs.count("msg_one") == 2  # evicted early: it ran again
