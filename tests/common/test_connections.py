"""The front door's own limits (``montage_common.web.connections``) over real sockets, and the
aiohttp internals the server extension relies on, so an aiohttp upgrade that moves them fails
here by name instead of silently dropping the limits.

The servers here are ``montage_common.web.AppRunner`` on a real TCP port in this process, as
``serve()`` builds them; ``tests/security/test_slow_clients.py`` does the same against the
services started as processes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web, web_protocol
from montage_common import web as common_web
from montage_common.web.connections import Connection, ConnectionLimits, FrontDoorServer, client_key

LIMITS = ConnectionLimits(keepalive_timeout=1.5, header_timeout=1.0, max_per_client=5)
GUARD = 30.0  # liveness bound of every read here, far above the limits under test


# --- what the extension relies on in aiohttp ------------------------------------------------
def test_aiohttp_still_offers_what_the_server_extension_uses() -> None:
    """Each private name montage_common.web.connections uses, checked where aiohttp defines it."""
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    init = inspect.signature(web_protocol.RequestHandler.__init__).parameters
    assert {"keepalive_timeout", "max_field_size", "loop"} <= init.keys()
    error = inspect.signature(web_protocol.RequestHandler.handle_error).parameters
    assert list(error) == ["self", "request", "status", "exc", "message"]
    slots = set(web_protocol.RequestHandler.__slots__)
    assert {"_current_request", "_waiter", "_messages", "_keepalive_timeout"} <= slots
    server_call = inspect.getsource(web.Server.__call__)
    assert "RequestHandler(self, loop=self._loop, **self._kwargs)" in server_call


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int, web.AppRunner]]:
    app = common_web.create_base_app("limits-test")

    async def hello(request: web.Request) -> web.Response:
        return common_web.json_response({"ok": True})

    app.router.add_get("/hello", hello)
    runner = common_web.AppRunner(app, limits=LIMITS, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    assert isinstance(runner.server, FrontDoorServer)
    yield "127.0.0.1", runner.addresses[0][1], runner
    await runner.cleanup()


async def _connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _get(port: int, source: str = "127.0.0.1") -> int:
    reader, writer = await _connect(port, source)
    try:
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), GUARD)
    finally:
        writer.close()
    return int(raw.split(b" ", 2)[1]) if raw else 0


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded by GUARD)."""
    return await asyncio.wait_for(reader.read(), GUARD)


async def test_an_idle_socket_is_closed_after_the_keepalive_timeout(server: tuple[str, int, web.AppRunner]) -> None:
    _, port, runner = server
    reader, writer = await _connect(port)
    assert await _until_closed(reader) == b""  # nothing sent, nothing answered: just closed
    writer.close()
    assert runner.server is not None and runner.server.connections == []


async def test_an_idle_keepalive_connection_is_closed_after_its_request(server: tuple[str, int, web.AppRunner]) -> None:
    _, port, _ = server
    reader, writer = await _connect(port)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    assert head.startswith(b"HTTP/1.1 200")
    rest = await _until_closed(reader)
    assert rest.endswith(b'{"ok":true}')
    writer.close()


async def test_a_slow_header_is_408_and_closed_while_others_are_served(
    server: tuple[str, int, web.AppRunner],
) -> None:
    _, port, _ = server
    reader, writer = await _connect(port)
    writer.write(b"GET /hello HTTP/1.1\r\n")
    sent = 0

    async def trickle() -> None:  # one header line at a time, never idle for long
        nonlocal sent
        for i in range(100):
            await asyncio.sleep(0.2)
            if writer.is_closing():
                return
            writer.write(f"X-Slow-{i}: a\r\n".encode())
            sent += 1

    dripping = asyncio.create_task(trickle())
    try:
        assert await _get(port) == 200  # another client meanwhile
        answer = await _until_closed(reader)
    finally:
        dripping.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"code":"VALIDATION_ERROR"' in answer
    assert sent < 100  # closed while it was still sending


async def test_the_per_client_cap_closes_the_excess_at_once_and_frees_slots(
    server: tuple[str, int, web.AppRunner],
) -> None:
    _, port, runner = server
    held = [await _connect(port, "127.0.0.2") for _ in range(LIMITS.max_per_client)]
    extra = [await _connect(port, "127.0.0.2") for _ in range(20)]
    for reader, _ in extra:  # closed by the server before any request
        assert await _until_closed(reader) == b""
    assert await _get(port, "127.0.0.3") == 200  # another client is not affected
    front = runner.server.front if isinstance(runner.server, FrontDoorServer) else None
    assert front is not None and front.open_per_client.get("127.0.0.2") == LIMITS.max_per_client
    reader, writer = held.pop()  # a held one is served
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await _until_closed(reader)).startswith(b"HTTP/1.1 200")
    writer.close()

    async def released() -> bool:
        return front.open_per_client.get("127.0.0.2") == LIMITS.max_per_client - 1

    await _wait(released)
    assert await _get(port, "127.0.0.2") == 200  # its slot is free again
    for _, w in held + extra:
        w.close()


async def _wait(check: Callable[[], Awaitable[bool]], attempts: int = 200) -> None:
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met")


def test_the_cap_counts_ipv4_addresses_and_ipv6_prefixes() -> None:
    assert client_key(("203.0.113.7", 5000)) == "203.0.113.7"
    assert client_key(("2001:db8:1:2:aaaa::1", 5000, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:2:bbbb::9", 5000, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:3::1", 5000, 0, 0)) == "2001:db8:1:3::/64"
    assert client_key(("::ffff:198.51.100.4", 5000, 0, 0)) == "198.51.100.4"
    assert client_key("/run/montage.sock") is None
    assert client_key(None) is None


def test_a_connection_is_the_extended_protocol() -> None:
    assert issubclass(Connection, web_protocol.RequestHandler)
