"""One job on the real stack, through the gateway: its ``job.completed`` webhook reaches a receiver on
127.0.0.1 and verifies with ``standardwebhooks``; its signed URLs work; then its owner deletes it:
nothing of it is left in storage or Redis, every route answers 404, the earlier signed URLs fail,
a second DELETE is 204 and another user's is 404; ``montage delete`` does the same."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
from aiohttp import web
from montage_cli.errors import ApiError
from montage_cli.main import main as cli_main
from montage_common.redis import create_redis
from montage_orchestrator.settings import DEV_WEBHOOK_SECRET
from standardwebhooks.webhooks import Webhook

from tests.e2e.flows import PROMPT, follow_to_end
from tests.stack import ClientFactory, RunningStack, dev_token, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", got
    await runner.cleanup()


def _files(storage: Path, job_id: str) -> list[Path]:
    return [p for p in storage.rglob("*") if p.is_file() and job_id in str(p)]


async def _keys(stack: RunningStack, job_id: str) -> list[bytes]:
    redis = create_redis(stack.redis_url)
    try:
        return [k async for k in redis.scan_iter(match=f"*{job_id}*", count=1000) if stack.namespace.encode() in k]
    finally:
        await redis.aclose()


async def test_webhook_then_delete(
    as_user: ClientFactory,
    e2e_stack: RunningStack,
    song: Path,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    hook_url, got = receiver
    client = await as_user(unique("dora"))
    job_id = str((await client.upload(song, PROMPT, webhook_url=hook_url))["job_id"])
    events = await follow_to_end(client, job_id)
    assert events[-1].event == "completed", [e.event for e in events[-3:]]
    for _ in range(200):  # the delivery loop sends right after the commit
        if got:
            break
        await asyncio.sleep(0.05)
    [(head, body)] = got
    event: dict[str, Any] = Webhook(DEV_WEBHOOK_SECRET).verify(body, head)
    assert event["type"] == "job.completed" and event["data"]["job_id"] == job_id

    async with aiohttp.ClientSession() as s:
        video_url = urljoin(e2e_stack.url + "/", event["data"]["video_url"])
        download_url = urljoin(e2e_stack.url + "/", (await client.download_info(job_id))["download_url"])
        for url in (video_url, download_url):
            async with s.get(url) as r:
                assert r.status == 200 and (await r.read())[4:8] == b"ftyp"
        assert _files(e2e_stack.storage_dir, job_id) and await _keys(e2e_stack, job_id)

        other = await as_user(unique("eve"))
        with pytest.raises(ApiError) as refused:
            await other.delete(job_id)
        assert refused.value.status == 404

        await client.delete(job_id)

        assert _files(e2e_stack.storage_dir, job_id) == []
        assert await _keys(e2e_stack, job_id) == []
        for call in (client.job, client.download_info, client.stream_ticket, client.retry, client.cancel):
            with pytest.raises(ApiError) as gone:
                await call(job_id)
            assert gone.value.status == 404, call.__name__
        token = client.headers(None)["Authorization"]
        async with s.get(f"{e2e_stack.url}/api/v1/jobs/{job_id}/stream", headers={"Authorization": token}) as r:
            assert r.status == 404
        for url in (video_url, download_url):  # signed before the delete, still unexpired
            async with s.get(url) as r:
                assert r.status in (404, 410), (url, r.status)
        await client.delete(job_id)  # again: 204
        with pytest.raises(ApiError) as refused:
            await other.delete(job_id)
        assert refused.value.status == 404


async def test_cli_delete(
    e2e_stack: RunningStack, song: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``montage delete JOB`` (the CLI's own ``main``, in a thread: a subprocess costs seconds to start)."""
    user = unique("fay")
    async with aiohttp.ClientSession() as s:
        token = await dev_token(s, e2e_stack.url, user)
        form = aiohttp.FormData()
        form.add_field("user_prompt", PROMPT)
        form.add_field("audio_file", song.read_bytes(), filename="song.mp3", content_type="audio/mpeg")
        async with s.post(
            f"{e2e_stack.url}/api/v1/upload-audio", data=form, headers={"Authorization": f"Bearer {token}"}
        ) as r:
            job_id = (await r.json())["job_id"]
    monkeypatch.setenv("MONTAGE_URL", e2e_stack.url)
    monkeypatch.setenv("MONTAGE_TOKEN", token)
    capsys.readouterr()
    assert await asyncio.to_thread(cli_main, ["delete", job_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"job_id": job_id, "deleted": True}
    assert await asyncio.to_thread(cli_main, ["status", job_id]) == 5  # 404
    assert _files(e2e_stack.storage_dir, job_id) == []
