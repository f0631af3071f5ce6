"""Idle and slow sockets, and one client holding many, against the services as production starts
them: every service its own process (``tests/stack.py``'s devstack), with short limits set here
(``HTTP_KEEPALIVE_TIMEOUT_SECONDS``, ``HTTP_HEADER_TIMEOUT_SECONDS``, the gateway's
``MAX_CONNECTIONS_PER_CLIENT``) so the test takes seconds, not the defaults' minutes.

Several hundred sockets are opened from other loopback addresses (``127.0.0.x``: the per-client
cap counts source addresses) while a well-behaved client on ``127.0.0.1`` keeps being served.
The counters behind the gateway's ops port (``montage_http_connections_closed_total``) say why
each socket was closed; that is the one look behind the door, and it is said where it happens.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import ARTIFACTS, E2E_ENV, _drop_namespace, _wait_healthy, fresh_database, stack_on_free_ports

pytestmark = pytest.mark.e2e

KEEPALIVE = 8.0
HEADER = 3.0
CAP = 100
LIMITS_ENV = {
    "HTTP_KEEPALIVE_TIMEOUT_SECONDS": str(KEEPALIVE),
    "HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER),
    "MAX_CONNECTIONS_PER_CLIENT": str(CAP),
}
GUARD = 90.0  # liveness bound of every wait, far above the limits under test (not an assertion)
TRICKLE_LINES = 60  # a slow client would send one header line a second for a minute


@dataclass
class Ports:
    gateway: int
    gateway_ops: int
    orchestrator: int
    orchestrator_ops: int
    proxy: int
    proxy_ops: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway}"


@pytest.fixture(scope="module")
def tight_stack(redis_url: str, server_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ports]:
    var_dir = tmp_path_factory.mktemp("tight-stack")
    namespace = f"slow{uuid.uuid4().hex[:10]}"
    with fresh_database(server_database_url, "montage_slow") as database_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MONTAGE_", "PYTEST_"))},
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "REDIS_NAMESPACE": namespace,
            "ENVIRONMENT": "development",
            "STORAGE_DIR": str(var_dir / "storage"),
        }
        stack = stack_on_free_ports(var_dir, env, {**E2E_ENV, **LIMITS_ENV}, log_dir=ARTIFACTS / "slow-clients-logs")
        try:
            stack.start(timeout=60)
            asyncio.run(_wait_healthy(f"http://127.0.0.1:{stack.gateway_port}", stack, 90))
            yield Ports(stack.gateway_port, stack.gateway_ops_port, stack.orchestrator_port,
                        stack.orchestrator_ops_port, stack.proxy_port, stack.proxy_ops_port)  # fmt: skip
        finally:
            stack.stop()
            asyncio.run(_drop_namespace(redis_url, namespace))


async def closed_by(ops_port: int) -> dict[str, float]:
    """Behind the door: the service's ``montage_http_connections_closed_total`` by reason."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{ops_port}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "montage_http_connections_closed":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["reason"]] = out.get(sample.labels["reason"], 0.0) + sample.value
    return out


async def connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def idle(port: int, source: str) -> bytes:
    """Connect, send nothing, and return what the server sends before it closes the socket."""
    reader, writer = await connect(port, source)
    try:
        return await asyncio.wait_for(reader.read(), GUARD)
    finally:
        writer.close()


async def slow(port: int, source: str) -> tuple[bytes, int]:
    """Send a request's head one line a second; return the answer and how many lines went out."""
    reader, writer = await connect(port, source)
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for i in range(TRICKLE_LINES):
            await asyncio.sleep(1.0)
            if writer.is_closing():
                return
            writer.write(f"X-Slow-{i}: {'a' * 20}\r\n".encode())
            sent += 1

    dripping = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), GUARD)
    except ConnectionResetError:
        answer = b"<reset>"
    finally:
        dripping.cancel()
        writer.close()
    return answer, sent


@dataclass
class Served:
    ok: int = 0
    failed: int = 0


async def keep_asking(url: str, served: Served, stop: asyncio.Event) -> None:
    """A well-behaved client: a health check every 0.3 s until ``stop``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        deadline = time.monotonic() + GUARD
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                async with s.get(f"{url}/api/v1/health") as r:
                    served.ok += r.status == 200
                    served.failed += r.status != 200
            except (aiohttp.ClientError, TimeoutError):
                served.failed += 1
            await asyncio.sleep(0.3)


@pytest.fixture
async def bystander(tight_stack: Ports) -> AsyncIterator[Served]:
    served, stop = Served(), asyncio.Event()
    task = asyncio.create_task(keep_asking(tight_stack.url, served, stop))
    yield served
    stop.set()
    await task


async def test_idle_and_slow_sockets_are_closed_on_every_port_while_others_are_served(
    tight_stack: Ports, bystander: Served
) -> None:
    p = tight_stack
    before = await closed_by(p.gateway_ops)
    # 300 sockets at the gateway from six addresses (50 each, under the cap), 40 at every other port
    sources = [f"127.0.0.{10 + i}" for i in range(6)]
    gateway_idle = [idle(p.gateway, sources[i % 6]) for i in range(150)]
    gateway_slow = [slow(p.gateway, sources[i % 6]) for i in range(150)]
    others = [p.gateway_ops, p.orchestrator, p.orchestrator_ops, p.proxy, p.proxy_ops]
    other_idle = [idle(port, "127.0.0.20") for port in others for _ in range(20)]
    other_slow = [slow(port, "127.0.0.21") for port in others for _ in range(20)]

    idle_answers, slow_answers = await asyncio.gather(
        asyncio.gather(*gateway_idle, *other_idle), asyncio.gather(*gateway_slow, *other_slow)
    )

    # every idle socket was closed by the server with nothing said (the keep-alive timeout)
    assert idle_answers == [b""] * len(idle_answers)
    # every slow one was answered 408 with the error body and closed, long before its last line
    for answer, sent in slow_answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"code":"VALIDATION_ERROR"' in answer
        assert sent < TRICKLE_LINES
    after = await closed_by(p.gateway_ops)
    assert after.get("header_timeout", 0) - before.get("header_timeout", 0) >= 150 + 20  # API and ops port
    assert after.get("per_client_cap", 0) == before.get("per_client_cap", 0)  # none of these was over the cap
    # the well-behaved client was served all along
    assert bystander.ok > 0 and bystander.failed == 0, bystander


async def test_the_gateway_caps_open_connections_per_client(tight_stack: Ports, bystander: Served) -> None:
    p = tight_stack
    before = await closed_by(p.gateway_ops)
    held = [await connect(p.gateway, "127.0.0.2") for _ in range(300)]
    # one of the first hundred is an ordinary connection: it is served
    reader, writer = held[0]
    writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), GUARD)).startswith(b"HTTP/1.1 200")
    # the 200 over the cap were closed on arrival, with nothing said
    refused = 0
    for reader, _ in held[CAP:]:
        assert await asyncio.wait_for(reader.read(), GUARD) == b""
        refused += 1
    after = await closed_by(p.gateway_ops)
    assert after.get("per_client_cap", 0) - before.get("per_client_cap", 0) == refused == 200
    for _, w in held:
        w.close()

    # once they are closed, the address gets connections again
    async def served_again() -> bool:
        conn = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        try:
            async with aiohttp.ClientSession(connector=conn) as s, s.get(f"{p.url}/api/v1/health") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    for _ in range(100):
        if await served_again():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("127.0.0.2 was not served again after closing its connections")
    assert bystander.ok > 0 and bystander.failed == 0, bystander


async def test_internal_services_have_no_per_client_cap(tight_stack: Ports) -> None:
    """Every connection to the orchestrator is the gateway's: it must never be capped."""
    p = tight_stack
    held = [await connect(p.orchestrator, "127.0.0.3") for _ in range(CAP + 50)]
    reader, writer = held[-1]
    writer.write(b"GET /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), GUARD)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]  # accepted and answered (no internal credential)
    assert (await closed_by(p.orchestrator_ops)).get("per_client_cap", 0) == 0
    for _, w in held:
        w.close()
