"""A small Chrome DevTools Protocol client over aiohttp websockets, and a headless Chromium to drive.

Debian's ``chromium`` (``apt-get install chromium``); no browser download.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from montage_dev.devstack import free_port

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
)


def chromium_executable() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


class CdpError(Exception):
    """A DevTools command failed."""


class Page:
    """One tab, attached with a flat session: ``await page.send("Page.navigate", url=...)``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(data["params"]["exceptionDetails"])[:500])

    async def send(self, method: str, _session: bool = True, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        payload: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if _session:
            payload["sessionId"] = self.session_id
        await self.ws.send_str(json.dumps(payload))
        async with asyncio.timeout(30):
            reply = await fut
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def eval(self, expression: str) -> Any:
        """Evaluate JavaScript (promises awaited) and return its JSON value."""
        reply = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression[:80]}: {reply['exceptionDetails']}")
        return reply.get("result", {}).get("value")

    async def wait_for(self, expression: str, limit: float, poll: float = 0.2) -> Any:
        """Poll ``expression`` until it is truthy (at most ``limit`` seconds)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            value = await self.eval(expression)
            if value:
                return value
            await asyncio.sleep(poll)
        raise TimeoutError(f"not true within {limit} s: {expression}\nconsole: {self.console[-10:]}")

    async def set_files(self, selector: str, files: list[Path]) -> None:
        obj = await self.send("Runtime.evaluate", expression=f"document.querySelector({json.dumps(selector)})")
        object_id = obj["result"]["objectId"]
        await self.send("DOM.setFileInputFiles", files=[str(f) for f in files], objectId=object_id)

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(shot["data"])

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        await asyncio.to_thread(write)
        return path

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def chromium_page(profile_dir: Path, width: int = 1280, height: int = 1000) -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab; the browser is killed on exit."""
    exe = chromium_executable()
    if exe is None:
        raise RuntimeError("no chromium on PATH: apt-get install -y chromium")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        exe, *FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={profile_dir}",
        f"--window-size={width},{height}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            ws_url = await _browser_ws_url(http, port, proc)
            async with http.ws_connect(ws_url, max_msg_size=64 * 1024 * 1024) as ws:
                # flat sessions: one websocket, commands tagged with the tab's session id
                boot = Page(ws, "")
                target = await boot.send("Target.createTarget", _session=False, url="about:blank")
                attached = await boot.send("Target.attachToTarget", _session=False, targetId=target["targetId"],
                                           flatten=True)  # fmt: skip
                boot.session_id = attached["sessionId"]
                for domain in ("Page", "Runtime", "DOM"):
                    await boot.send(f"{domain}.enable")
                await boot.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                                deviceScaleFactor=1, mobile=False)  # fmt: skip
                try:
                    yield boot
                finally:
                    await boot.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _browser_ws_url(http: aiohttp.ClientSession, port: int, proc: asyncio.subprocess.Process) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{port}/json/version") as r:
                if r.status == 200:
                    return str((await r.json())["webSocketDebuggerUrl"])
        await asyncio.sleep(0.1)
    raise RuntimeError("chromium's DevTools endpoint did not come up")
