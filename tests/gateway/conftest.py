"""Gateway fixtures: the fake orchestrator, gateway apps (several replicas if asked), tokens, SSE reading."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from montage_common.events import event_emit
from montage_contracts.api import HeartbeatData, StateData
from montage_contracts.events import decode_data
from montage_contracts.keys import Keys
from montage_gateway.app import create_app
from montage_gateway.settings import DEV_JWT_SECRET, GatewaySettings
from montage_gateway.tokens import mint_dev_token
from montage_streams import StreamProducer

from tests.gateway.fake_orchestrator import SECRET, FakeOrchestrator


def token(user_id: str, ttl: float = 600, **extra: Any) -> str:
    return mint_dev_token(DEV_JWT_SECRET, user_id, ttl, extra=extra)


def bearer(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user_id)}"}


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[TestServer]]]:
    """Start an aiohttp app on 127.0.0.1; closed at the end of the test."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


@dataclass
class Orchestrator:
    fake: FakeOrchestrator
    url: str


@pytest.fixture
async def orchestrator(serve: Callable[[web.Application], Awaitable[TestServer]]) -> Orchestrator:
    fake = FakeOrchestrator()
    server = await serve(fake.app())
    return Orchestrator(fake, str(server.make_url("")).rstrip("/"))


@pytest.fixture
def make_settings(redis_url: str, namespace: str, orchestrator: Orchestrator) -> Callable[..., GatewaySettings]:
    def make(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "environment": "development",
            "redis_url": redis_url,
            "redis_namespace": namespace,
            "internal_secret": SECRET,
            "orchestrator_url": orchestrator.url,
            "ragnarok_proxy_url": orchestrator.url,  # the fake answers the Nexus poll route too
            "frontend_url": "http://app.example.com",
            "sse_close_after_final_seconds": 0.2,
        }
        values.update(overrides)
        return msgspec.convert(values, GatewaySettings)

    return make


@dataclass
class Gateways:
    """Starts gateway replicas; each a TestClient on its own port."""

    serve: Callable[[web.Application], Awaitable[TestServer]]
    make_settings: Callable[..., GatewaySettings]
    clients: list[TestClient] = field(default_factory=list)

    async def start(self, **overrides: Any) -> TestClient:
        server = await self.serve(create_app(self.make_settings(**overrides)))
        client = TestClient(server)
        await client.start_server()
        self.clients.append(client)
        return client


@pytest.fixture
async def gateways(
    serve: Callable[[web.Application], Awaitable[TestServer]],
    make_settings: Callable[..., GatewaySettings],
    redis: Any,  # cleans this test's keys afterwards
) -> AsyncIterator[Gateways]:
    g = Gateways(serve, make_settings)
    yield g
    for client in g.clients:
        await client.close()


@pytest.fixture
async def gw(gateways: Gateways) -> TestClient:
    return await gateways.start()


@pytest.fixture
def emit(redis: Any, keys: Keys) -> Callable[[str, str, dict[str, Any]], Awaitable[str]]:
    """Write one job event exactly as the orchestrator does (XADD + PUBLISH in one script)."""
    producer = StreamProducer(redis)

    async def send(job_id: str, event: str, data: dict[str, Any]) -> str:
        payload = decode_data(event, msgspec.json.encode(data))  # the typed payload the orchestrator passes
        assert not isinstance(payload, StateData | HeartbeatData)
        (entry_id,) = await producer.emit([event_emit(keys, job_id, payload)])
        return entry_id

    return send


@dataclass
class SseEvent:
    event: str
    data: dict[str, Any]
    id: str | None


async def next_event(resp: ClientResponse, *, skip_heartbeats: bool = True) -> SseEvent | None:
    """The next SSE message of ``resp`` (None at end of stream)."""
    while True:
        fields: dict[str, str] = {}
        while True:
            line = await resp.content.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if not text:
                break
            name, _, value = text.partition(": ")
            fields[name] = value
        if not fields:
            continue
        ev = SseEvent(fields.get("event", "message"), msgspec.json.decode(fields.get("data", "{}")), fields.get("id"))
        if skip_heartbeats and ev.event == "heartbeat":
            continue
        return ev
