"""Helpers shared by the test packages (fixtures live in the conftest files)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web
from montage_common.web import HEADER_INTERNAL, HEADER_USER, create_ops_app


def contract_tool() -> ModuleType:
    """``tools/contract.py`` (a script, not a package): the contract's generators and pinned npm tools."""
    path = Path(__file__).resolve().parents[1] / "tools" / "contract.py"
    spec = importlib.util.spec_from_file_location("contract_tool", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def internal_headers(user: str, secret: str) -> dict[str, str]:
    """What the gateway adds when it forwards a verified user's request to an internal service."""
    return {HEADER_INTERNAL: secret, HEADER_USER: user}


async def wait_for(check: Callable[[], Awaitable[Any]], *, attempts: int = 400, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (bounded); returns that value."""
    last: Any = None
    for _ in range(attempts):
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met after {attempts} checks; last value: {last!r}")


@contextlib.asynccontextmanager
async def ops_server(api: web.Application) -> AsyncIterator[str]:
    """Serve ``api``'s ops endpoints (``/healthz``, ``/readyz``, ``/metrics``) as its ops port does."""
    runner = web.AppRunner(create_ops_app(api), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def raw_http(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` byte for byte (no client normalises its path) and read the whole answer."""
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        raw = await reader.read()  # every answer here ends with Connection: close
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def raw_request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """An HTTP/1.1 request with ``path`` exactly as given and ``Connection: close``."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
