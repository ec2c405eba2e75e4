"""Rate limits per client identity (SPKI pin) in the receiver: 429 with ``Retry-After`` over the
limit, with an injected clock, on buckets in memory, PostgreSQL and Redis.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio
from quart import Quart
from quart.testing import QuartClient

from certs_tool import CA, IssuedCert
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.queue._protocol import StoreUnavailableError
from mtls_hooks.receiver._receiver import WebhookReceiver
from mtls_hooks.stores._ratelimit import MemoryRateLimiter, Rate, RateLimiter
from tests.peers import PG_URL, REDIS_URL
from tests.receiver.conftest import Sender, tls_scope
from tests.stores._backends import Clock, app_with, need


@pytest.fixture(scope="module")
def sender() -> Sender:
    return Sender()


@pytest.fixture(scope="module")
def alice(certs_ca: CA) -> IssuedCert:
    return certs_ca.issue_client("alice")


@pytest.fixture(scope="module")
def bob(certs_ca: CA) -> IssuedCert:
    return certs_ca.issue_client("bob")


@pytest_asyncio.fixture(params=["memory", "postgresql", "redis"])
async def limiter(
    request: pytest.FixtureRequest, namespace: str
) -> AsyncIterator[tuple[RateLimiter, Clock]]:
    backend: str = request.param
    need(backend)
    clock = Clock()
    if backend == "memory":
        yield MemoryRateLimiter(clock=clock), clock
        return
    store: Any
    if backend == "postgresql":
        from mtls_hooks.stores._postgres import PostgresDedupeStore

        store = PostgresDedupeStore(PG_URL, namespace=namespace, clock=clock)
        yield store.rate_limiter(), clock
    else:
        from mtls_hooks.stores._redis import RedisDedupeStore

        store = RedisDedupeStore(REDIS_URL, namespace=namespace)
        yield store.rate_limiter(clock=clock), clock
    await store.aclose()


@pytest.mark.asyncio
async def test_an_identity_over_its_limit_gets_429_and_another_is_not_slowed(
    limiter: tuple[RateLimiter, Clock], sender: Sender, alice: IssuedCert, bob: IssuedCert
) -> None:
    rate_limiter, clock = limiter
    app = Quart(__name__)
    hooks = WebhookReceiver(
        app, path="/h", keys=[sender.key], rate_limit="3/min", rate_limiter=rate_limiter
    )
    handled: list[str] = []

    @hooks.on_any
    async def record(event: WebhookEvent) -> None:
        assert event.peer is not None
        handled.append(event.peer.subject)

    client = cast(QuartClient, app.test_client())

    async def deliver(who: IssuedCert) -> Any:
        body, headers = sender.request()
        return await client.post("/h", data=body, headers=headers, scope_base=tls_scope(who))

    assert [(await deliver(alice)).status_code for _ in range(3)] == [204, 204, 204]
    refused = await deliver(alice)
    assert refused.status_code == 429
    assert refused.content_type == "application/problem+json"
    assert json.loads(await refused.get_data())["reason"] == "rate-limited"
    assert refused.headers["Retry-After"] == "20"  # one token per 20 s
    # Bob has his own bucket: Alice's flood does not slow him.
    assert [(await deliver(bob)).status_code for _ in range(3)] == [204, 204, 204]
    clock.now += 19
    assert (await deliver(alice)).status_code == 429
    assert (await deliver(alice)).headers["Retry-After"] == "1"
    clock.now += 1
    assert (await deliver(alice)).status_code == 204
    assert (await deliver(alice)).status_code == 429
    assert len(handled) == 7  # refused deliveries never reached the handler


@pytest.mark.asyncio
async def test_the_limit_is_per_identity_across_endpoints_unless_per_endpoint(
    sender: Sender, alice: IssuedCert
) -> None:
    clock = Clock()
    app = Quart(__name__)
    hooks = WebhookReceiver(
        app, keys=[sender.key], rate_limit="1/h", rate_limiter=MemoryRateLimiter(clock=clock)
    )
    hooks.endpoint("/a", name="a")
    hooks.endpoint("/b", name="b")
    hooks.endpoint("/own", name="own", rate_limit_per_endpoint=True)
    hooks.endpoint("/free", name="free", rate_limit=None)
    hooks.on_any(lambda event: None)
    client = cast(QuartClient, app.test_client())

    async def status(path: str) -> int:
        body, headers = sender.request()
        response = await client.post(path, data=body, headers=headers, scope_base=tls_scope(alice))
        return response.status_code

    assert [await status(p) for p in ("/a", "/b", "/own", "/own", "/free", "/free")] == [
        204,
        429,  # one bucket for Alice across /a and /b
        204,  # /own keeps its own
        429,
        204,  # no limit here
        204,
    ]


@pytest.mark.asyncio
async def test_a_refused_identity_spends_no_token(
    sender: Sender, alice: IssuedCert, bob: IssuedCert
) -> None:
    """Identity checks come first: a peer the endpoint refuses never touches a bucket."""
    limiter = MemoryRateLimiter(clock=Clock())
    app = Quart(__name__)
    WebhookReceiver(
        app,
        path="/h",
        keys=[sender.key],
        pins=[alice.spki_pin],
        rate_limit="1/h",
        rate_limiter=limiter,
    )
    client = cast(QuartClient, app.test_client())
    body, headers = sender.request()
    response = await client.post("/h", data=body, headers=headers, scope_base=tls_scope(bob))
    assert response.status_code == 403
    assert len(limiter) == 0


@pytest.mark.parametrize("value", ["3/fortnight", "0/s", "many", 3, "3/min/extra"], ids=str)
def test_a_malformed_rate_limit_is_a_configuration_error(value: object, sender: Sender) -> None:
    with pytest.raises(ConfigurationError, match="rate_limit"):
        app_with({}, sender, rate_limit=value)


@pytest.mark.asyncio
async def test_a_rate_limit_store_failure_is_503(sender: Sender, alice: IssuedCert) -> None:
    class Broken:
        async def acquire(self, key: str, rate: Any) -> float:
            raise StoreUnavailableError("down")

        async def aclose(self) -> None: ...

    app = Quart(__name__)
    WebhookReceiver(app, path="/h", keys=[sender.key], rate_limit="5/s", rate_limiter=Broken())
    body, headers = sender.request()
    client = cast(QuartClient, app.test_client())
    response = await client.post("/h", data=body, headers=headers, scope_base=tls_scope(alice))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"


def test_rate_limit_settings_come_from_the_config_too(sender: Sender) -> None:
    config = {"MTLS_HOOKS_RATE_LIMIT": "90/min", "MTLS_HOOKS_RATE_LIMIT_PER_ENDPOINT": "yes"}
    hooks = app_with(config, sender)
    settings = hooks.settings(next(iter(hooks._states)), "default")
    assert settings.rate_limit == Rate(90, 60.0)
    assert settings.rate_limit_per_endpoint is True
    assert settings.rate_limit.interval_s == pytest.approx(2 / 3)
