"""ServerConfig: typed, frozen, typo-proof, secure by default; TOML, env and CLI layers."""

from __future__ import annotations

import dataclasses
import pickle
import socket
from pathlib import Path
from typing import Any

import pytest

from certs_tool import CA
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.serving._config import ServerConfig, parse_bind
from mtls_hooks.serving._serving import create_sockets
from tests.serving.conftest import Cast, Pki


def _base(pki: Pki, cast: Cast) -> dict[str, Any]:
    return {
        "certfile": pki.server_cert,
        "keyfile": pki.server_key,
        "client_ca": [pki.ca_file],
        "pins": [cast.alpha.spki_pin],
    }


def test_defaults_are_secure(pki: Pki, cast: Cast) -> None:
    config = ServerConfig.from_mapping(_base(pki, cast))
    assert config.bind == ("127.0.0.1:8443",)
    assert config.allow_any_client is False
    assert config.workers == 1
    assert config.max_header_bytes == 16384
    assert config.handshake_timeout_s == 10.0
    assert config.peer_policy().spki_pins == {cast.alpha.spki_pin}


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        pytest.param("clent_ca", "client_ca", id="clent_ca"),
        pytest.param("pin", "pins", id="pin"),
        pytest.param("handshake_timeout", "handshake_timeout_s", id="no-unit"),
        pytest.param("allow_any", "allow_any_client", id="allow_any"),
    ],
)
def test_unknown_key_names_the_closest(pki: Pki, cast: Cast, key: str, suggestion: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ServerConfig.from_mapping({**_base(pki, cast), key: "x"})
    assert str(info.value) == f"unknown setting {key!r} (did you mean {suggestion!r}?)"


@pytest.mark.parametrize("key", ["quic_bind", "http3"])
def test_http3_is_refused(pki: Pki, cast: Cast, key: str) -> None:
    with pytest.raises(ConfigurationError, match="HTTP/3 ignores client certificates; refusing"):
        ServerConfig.from_mapping({**_base(pki, cast), key: "127.0.0.1:8443"})


def test_empty_policy_says_how_to_fix(pki: Pki, cast: Cast) -> None:
    settings = {**_base(pki, cast), "pins": []}
    with pytest.raises(ConfigurationError) as info:
        ServerConfig.from_mapping(settings)
    message = str(info.value)
    assert "--pin" in message
    assert "--allow-san" in message
    assert "allow_any_client" in message
    assert ServerConfig.from_mapping({**settings, "allow_any_client": True}).allow_any_client


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        pytest.param({"workers": 0}, "workers must be >= 1", id="workers-0"),
        pytest.param({"workers": True}, "invalid value", id="workers-bool"),
        pytest.param({"bind": ["::1:8443"]}, r"\[::1\]:port", id="bare-ipv6"),
        pytest.param({"bind": ["localhost"]}, "host:port", id="no-port"),
        pytest.param({"bind": ["127.0.0.1:70000"]}, "0..65535", id="port-range"),
        pytest.param({"handshake_timeout_s": 0}, "must be > 0", id="timeout-0"),
        pytest.param({"log_level": "LOUD"}, "log_level", id="log-level"),
        pytest.param({"allow": ["url:https://x"]}, "did you mean 'uri'", id="bad-rule"),
        pytest.param({"pins": ["sha256/short"]}, "not an SPKI pin", id="bad-pin"),
        pytest.param({"client_ca": []}, "client_ca", id="no-ca"),
        pytest.param(
            {"key_password_env": "A", "key_password_file": "/f"}, "not both", id="two-passwords"
        ),
    ],
)
def test_invalid_values(pki: Pki, cast: Cast, changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ServerConfig.from_mapping({**_base(pki, cast), **changes})


def test_bind_forms() -> None:
    assert parse_bind("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_bind("[::1]:8443") == ("::1", 8443)
    assert parse_bind("localhost:0") == ("localhost", 0)
    with pytest.raises(ConfigurationError, match="not an IPv6 address"):
        parse_bind("[nope]:1")


def test_frozen_and_picklable(pki: Pki, cast: Cast) -> None:
    config = ServerConfig.from_mapping(_base(pki, cast))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 4  # type: ignore[misc]
    # Spawned workers receive the config pickled by multiprocessing.
    assert pickle.loads(pickle.dumps(config)) == config  # noqa: S301 - our own bytes
    assert config.replace(workers=3).workers == 3
    with pytest.raises(ConfigurationError, match="did you mean 'workers'"):
        config.replace(worker=3)


def test_from_env(pki: Pki, cast: Cast) -> None:
    environ = {
        "MTLS_HOOKS_CERTFILE": pki.server_cert,
        "MTLS_HOOKS_KEYFILE": pki.server_key,
        "MTLS_HOOKS_CLIENT_CA": f"{pki.ca_file}, {pki.ca_file}",
        "MTLS_HOOKS_ALLOW": "dns:a.example,uri:spiffe://test.example/*",
        "MTLS_HOOKS_WORKERS": "2",
        "MTLS_HOOKS_WATCH_FILES": "yes",
        "MTLS_HOOKS_READ_TIMEOUT_S": "7.5",
        "UNRELATED": "ignored",
    }
    config = ServerConfig.from_env(environ)
    assert config.client_ca == (pki.ca_file, pki.ca_file)
    assert config.allow == ("dns:a.example", "uri:spiffe://test.example/*")
    assert config.workers == 2
    assert config.watch_files is True
    assert config.read_timeout_s == 7.5


def test_from_env_unknown_variable() -> None:
    with pytest.raises(ConfigurationError) as info:
        ServerConfig.from_env({"MTLS_HOOKS_CLENT_CA": "x"})
    assert "did you mean 'MTLS_HOOKS_CLIENT_CA'" in str(info.value)


def test_receiver_variables_are_accepted_and_left_to_the_receiver(
    pki: Pki, cast: Cast, tmp_path: Path
) -> None:
    environ = {
        "MTLS_HOOKS_CERTFILE": pki.server_cert,
        "MTLS_HOOKS_KEYFILE": pki.server_key,
        "MTLS_HOOKS_CLIENT_CA": pki.ca_file,
        "MTLS_HOOKS_PINS": cast.alpha.spki_pin,
        "MTLS_HOOKS_DEDUPE_PATH": str(tmp_path / "dedupe.sqlite3"),
        "MTLS_HOOKS_KEYS": "whsec_" + "A" * 44,
        "MTLS_HOOKS_TOLERANCE_S": "60",
        "MTLS_HOOKS_SECRET": "whsec_" + "A" * 44,  # the sender CLI's
    }
    from_env = ServerConfig.from_env(environ)
    loaded = ServerConfig.load(environ=environ, overrides={"workers": 2})
    assert from_env.replace(workers=2) == loaded
    assert loaded.pins == (cast.alpha.spki_pin,)


def test_unknown_variable_suggestion_includes_receiver_names() -> None:
    with pytest.raises(ConfigurationError) as info:
        ServerConfig.from_env({"MTLS_HOOKS_DEDUPE_PAHT": "x"})
    assert str(info.value) == (
        "unknown environment setting 'MTLS_HOOKS_DEDUPE_PAHT' "
        "(did you mean 'MTLS_HOOKS_DEDUPE_PATH'?)"
    )


def test_receiver_variables_are_unknown_under_another_prefix() -> None:
    # Only MTLS_HOOKS_ is shared with the receiver, which reads no other prefix.
    with pytest.raises(ConfigurationError, match="unknown environment setting 'RX_DEDUPE_PATH'"):
        ServerConfig.from_env({"RX_DEDUPE_PATH": "x"}, prefix="RX_")


def _write_toml(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize("section", ["", "[server]\n"])
def test_from_toml(pki: Pki, cast: Cast, section: str) -> None:
    # Relative paths are relative to the file (the PKI lives beside it).
    path = _write_toml(
        pki.directory / "receiver.toml",
        f"{section}certfile = 'server.pem'\nkeyfile = 'server.key'\nclient_ca = ['ca.pem']\n"
        f"pins = ['{cast.alpha.spki_pin}']\nbind = ['[::1]:9443', '127.0.0.1:9443']\n"
        "keep_alive_timeout_s = 3\n",
    )
    config = ServerConfig.from_toml(path)
    assert config.certfile == pki.server_cert
    assert config.client_ca == (pki.ca_file,)
    assert config.bind == ("[::1]:9443", "127.0.0.1:9443")
    assert config.keep_alive_timeout_s == 3.0
    assert config.config_file == str(path)


def test_toml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        ServerConfig.from_toml(_write_toml(tmp_path / "a.toml", "certfile = \n"))
    with pytest.raises(ConfigurationError, match="did you mean 'keyfile'"):
        ServerConfig.from_toml(_write_toml(tmp_path / "b.toml", "[server]\nkeyfil = 'k'\n"))
    with pytest.raises(ConfigurationError, match="HTTP/3"):
        ServerConfig.from_toml(_write_toml(tmp_path / "c.toml", "quic_bind = ['0.0.0.0:443']\n"))
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        ServerConfig.from_toml(tmp_path / "missing.toml")


def test_precedence_cli_over_env_over_file(pki: Pki, cast: Cast) -> None:
    path = _write_toml(
        pki.directory / "layers.toml",
        f"certfile = 'server.pem'\nkeyfile = 'server.key'\nclient_ca = ['ca.pem']\n"
        f"pins = ['{cast.alpha.spki_pin}']\nworkers = 2\nlog_level = 'debug'\n",
    )
    env = {"MTLS_HOOKS_WORKERS": "3"}
    assert ServerConfig.load(config_file=path, environ=env).workers == 3
    config = ServerConfig.load(config_file=path, environ=env, overrides={"workers": 4})
    assert config.workers == 4
    assert config.log_level == "DEBUG"
    # A reload re-reads the file but keeps the env and CLI layers on top.
    assert config.reloaded().workers == 4


def test_missing_crl_trap_is_a_startup_error(pki: Pki, cast: Cast, tmp_path: Path) -> None:
    second = CA(name="second client CA")
    bundle = tmp_path / "two-cas.pem"
    bundle.write_bytes(pki.ca.cert_pem.bytes() + second.cert_pem.bytes())
    config = ServerConfig.from_mapping(
        {**_base(pki, cast), "client_ca": [str(bundle)], "crl": [pki.crl_file]}
    )
    with pytest.raises(ConfigurationError, match=r"second client CA.*has no CRL"):
        config.check_files()


def test_files_are_checked_before_serving(pki: Pki, cast: Cast, tmp_path: Path) -> None:
    other = pki.ca.issue_server("localhost")
    other.private_key_pem().write_to_path(tmp_path / "other.key")
    mismatched = ServerConfig.from_mapping({**_base(pki, cast), "keyfile": tmp_path / "other.key"})
    with pytest.raises(ConfigurationError, match="does not match"):
        mismatched.check_files()
    missing = ServerConfig.from_mapping({**_base(pki, cast), "certfile": tmp_path / "nope.pem"})
    with pytest.raises(ConfigurationError, match="cannot read certificate"):
        missing.check_files()
    no_password = ServerConfig.from_mapping(
        {**_base(pki, cast), "key_password_env": "MTLS_HOOKS_TEST_UNSET_PASSWORD"}
    )
    with pytest.raises(ConfigurationError, match="is not set"):
        no_password.check_files()


def test_encrypted_key_from_password_file(pki: Pki, cast: Cast, tmp_path: Path) -> None:
    pki.server.private_key_pem(b"s3cret").write_to_path(tmp_path / "enc.key")
    (tmp_path / "pass").write_text("s3cret\n")
    config = ServerConfig.from_mapping(
        {
            **_base(pki, cast),
            "keyfile": tmp_path / "enc.key",
            "key_password_file": tmp_path / "pass",
        }
    )
    config.check_files()
    assert "s3cret" not in repr(config)


def test_ipv6_bind_is_v6_only() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    config = ServerConfig.from_mapping(
        {
            "certfile": "c",
            "keyfile": "k",
            "client_ca": ["ca"],
            "allow_any_client": True,
            "bind": ["[::1]:0", "127.0.0.1:0"],
        }
    )
    try:
        sockets = create_sockets(config)
    except ConfigurationError as exc:  # a container without ::1
        pytest.skip(str(exc))
    try:
        families = [s.family for s in sockets]
        assert families == [socket.AF_INET6, socket.AF_INET]
        assert sockets[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for sock in sockets:
            sock.close()


def test_other_tables_beside_server_are_left_to_their_owners(pki: Pki, cast: Cast) -> None:
    path = _write_toml(
        pki.directory / "shared.toml",
        f"[server]\ncertfile = 'server.pem'\nkeyfile = 'server.key'\nclient_ca = ['ca.pem']\n"
        f"pins = ['{cast.alpha.spki_pin}']\n\n[receiver]\ntolerance_s = 300\n",
    )
    assert ServerConfig.from_toml(path).pins == (cast.alpha.spki_pin,)
