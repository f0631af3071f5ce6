"""Webhooks: the outbox row written with the final status, signed deliveries verified with
``standardwebhooks`` by a real receiver on 127.0.0.1, retries with the same ``webhook-id``, a
delivery that outlives its orchestrator, the SSRF rules at upload and at delivery, the console."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from montage_common.storage import LocalStorage
from montage_dev.devstack import free_port
from montage_orchestrator import ssrf, webhooks
from standardwebhooks.webhooks import Webhook

from tests.orchestrator.conftest import (
    FakeStages,
    Orchestrator,
    Reply,
    headers,
    orchestrator_ready,
    process_env,
    spawn_orchestrator,
    upload_form,
    wait_for,
    wav_bytes,
)

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Receiver:
    """A webhook receiver: records every request; answers ``statuses`` in turn, then 204."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    hold: asyncio.Event | None = None
    location: str = ""  # sent as Location with a 3xx

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(({k.lower(): v for k, v in request.headers.items()}, body))
        if self.hold is not None:
            await self.hold.wait()
        status = self.statuses.pop(0) if self.statuses else 204
        headers = {"Location": self.location} if self.location and 300 <= status < 400 else None
        return web.Response(status=status, headers=headers)

    def verified(self, secret: str = SECRET) -> list[tuple[str, dict[str, Any]]]:
        """Every request's ``webhook-id`` and body, each verified (raises otherwise)."""
        wh = Webhook(secret)
        return [(h["webhook-id"], wh.verify(body, h)) for h, body in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield rec
    if rec.hold is not None:
        rec.hold.set()
    await runner.cleanup()


FAST = {"webhook_secret": SECRET, "webhook_retry_base_seconds": 0.2, "webhook_poll_seconds": 0.1}


async def _deliveries(pool: asyncpg.Pool, job_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM webhook_deliveries WHERE job_id = $1::uuid ORDER BY created_at", job_id)


async def test_completed_job_is_delivered_signed(
    orchestrator_factory: Any, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    orch: Orchestrator = await orchestrator_factory(**FAST)
    resp = await orch.upload(webhook_url=receiver.url)
    assert resp.status == 201, await resp.text()
    job_id = (await resp.json())["job_id"]
    await orch.wait_final(job_id)
    await wait_for(lambda: asyncio.sleep(0, receiver.received))
    [(webhook_id, event)] = receiver.verified()
    assert webhook_id.startswith("msg_")
    assert event["type"] == "job.completed"
    assert event["timestamp"].endswith("Z")
    data = event["data"]
    assert data["job_id"] == job_id and data["status"] == "completed" and data["error"] is None
    assert data["video_url"].startswith("http://127.0.0.1:1/files/video-outputs/") and data["total_cost"] > 0
    assert receiver.received[0][0]["user-agent"].startswith("Montage-Webhooks/")

    async def delivered() -> asyncpg.Record | None:
        rows = await _deliveries(pool, job_id)
        return rows[0] if rows and rows[0]["state"] == "delivered" else None

    row = await wait_for(delivered)
    assert row["id"] == webhook_id and row["attempts"] == 1 and row["last_status"] == 204
    # a wrong secret does not verify
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(Exception, match="signature"):
        receiver.verified(other)


async def test_failing_receiver_is_retried_with_the_same_id(
    orchestrator_factory: Any, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    trap = Receiver()  # where a redirect points: never contacted (redirects are not followed)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", trap.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.statuses = [500, 503, 302]  # a redirect is a failed attempt too
    receiver.location = f"http://127.0.0.1:{runner.addresses[0][1]}/internal"
    orch: Orchestrator = await orchestrator_factory(**FAST)
    job_id = (await (await orch.upload(webhook_url=receiver.url)).json())["job_id"]
    await orch.wait_final(job_id)

    async def delivered() -> asyncpg.Record | None:
        rows = await _deliveries(pool, job_id)
        return rows[0] if rows and rows[0]["state"] == "delivered" else None

    row = await wait_for(delivered)
    events = receiver.verified()
    assert len(events) == 4 and row["attempts"] == 4
    assert {wid for wid, _ in events} == {row["id"]}
    # the same event every time; only the video's signed URL is made afresh for each attempt
    bodies = {json.dumps({**e, "data": {**e["data"], "video_url": None}}, sort_keys=True) for _, e in events}
    assert len(bodies) == 1 and all(e["data"]["video_url"] for _, e in events)
    stamps = [int(h["webhook-timestamp"]) for h, _ in receiver.received]
    assert stamps == sorted(stamps)
    assert trap.received == []
    await runner.cleanup()


async def test_cancel_sends_job_cancelled(orchestrator_factory: Any, receiver: Receiver) -> None:
    orch: Orchestrator = await orchestrator_factory(**FAST)
    hold = asyncio.Event()
    orch.fakes.behaviour["audio_parser"] = lambda _t: Reply(hold=hold)
    job_id = (await (await orch.upload(webhook_url=receiver.url)).json())["job_id"]
    resp = await orch.session.post(f"{orch.url}/api/v1/jobs/{job_id}/cancel", headers=headers())
    assert resp.status == 200
    hold.set()
    await wait_for(lambda: asyncio.sleep(0, receiver.received))
    [(_, event)] = receiver.verified()
    assert event["type"] == "job.cancelled"
    assert event["data"]["error_code"] == "CANCELLED" and event["data"]["video_url"] is None


async def test_failed_job_sends_job_failed(orchestrator_factory: Any, receiver: Receiver) -> None:
    from montage_contracts.messages import ErrorInfo

    orch: Orchestrator = await orchestrator_factory(**FAST)
    orch.fakes.behaviour["audio_parser"] = lambda _t: Reply(error=ErrorInfo(code="MODULE_FAILURE", message="bad"))
    job_id = (await (await orch.upload(webhook_url=receiver.url)).json())["job_id"]
    await orch.wait_final(job_id)
    await wait_for(lambda: asyncio.sleep(0, receiver.received))
    [(_, event)] = receiver.verified()
    assert event["type"] == "job.failed" and event["data"]["status"] == "failed" and event["data"]["error"]


async def test_delivery_outlives_its_orchestrator(
    orchestrator_factory: Any, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    """The first orchestrator gets 500 and stops; the row waits in Postgres; another process
    (a new orchestrator) delivers it with the same webhook-id."""
    receiver.statuses = [500]
    first: Orchestrator = await orchestrator_factory(webhook_secret=SECRET, webhook_retry_base_seconds=2.0)
    job_id = (await (await first.upload(webhook_url=receiver.url)).json())["job_id"]
    await first.wait_final(job_id)

    async def failed_once() -> asyncpg.Record | None:
        rows = await _deliveries(pool, job_id)
        return rows[0] if rows and rows[0]["attempts"] == 1 and rows[0]["last_status"] == 500 else None

    row = await wait_for(failed_once)
    assert row["state"] == "pending"
    await first.stop()  # its background loops end (the delivery loop included)
    second: Orchestrator = await orchestrator_factory(workers=False, **FAST)
    assert second.deps is not first.deps

    async def delivered() -> asyncpg.Record | None:
        rows = await _deliveries(pool, job_id)
        return rows[0] if rows and rows[0]["state"] == "delivered" else None

    done = await wait_for(delivered)
    ids = [wid for wid, _ in receiver.verified()]
    assert ids == [row["id"], row["id"]] and done["attempts"] == 2


UNSAFE_URLS = (
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://10.0.0.5/hook",
    "http://100.64.1.1/hook",
    "http://[::ffff:192.168.1.1]/",
    "ftp://example.com/hook",
    "http://user:pw@127.0.0.1/hook",
    "not a url",
)


async def test_upload_refuses_unsafe_webhook_urls(orchestrator_factory: Any, pool: asyncpg.Pool) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False, webhook_secret=SECRET)
    before = await pool.fetchval("SELECT count(*) FROM jobs")
    for url in UNSAFE_URLS:
        resp = await orch.upload(user="u-ssrf", webhook_url=url)
        assert resp.status == 400, (url, await resp.text())
        body = await resp.json()
        assert body["code"] == "VALIDATION_ERROR" and "webhook_url" in body["error"], url
        assert set(body) == {"error", "code", "retryable", "job_id"}
    assert await pool.fetchval("SELECT count(*) FROM jobs") == before


async def test_production_refuses_http_and_loopback_at_upload_and_delivery(
    orchestrator_factory: Any, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    prod: Orchestrator = await orchestrator_factory(workers=False, environment="production", webhook_secret=SECRET)
    resp = await prod.upload(user="u-prod", webhook_url=receiver.url)
    assert resp.status == 400 and "https" in (await resp.json())["error"]
    resp = await prod.upload(user="u-prod", webhook_url=receiver.url.replace("http://", "https://"))
    assert resp.status == 400 and "loopback" in (await resp.json())["error"]
    # A row that names a loopback URL (written before a move to production, say) is refused at
    # delivery: the receiver is never contacted.
    job_id = await prod.create_job(user="u-prod")
    await pool.execute(
        "UPDATE jobs SET webhook_url = $2, status = 'completed', completed_at = now() WHERE job_id = $1::uuid",
        job_id,
        receiver.url.replace("http://", "https://"),
    )
    sender = webhooks.Sender(prod.deps)
    [row] = await _deliveries(pool, job_id)
    await pool.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = $1", row["id"])

    async def refused() -> asyncpg.Record | None:
        await sender.tick()
        [r] = await _deliveries(pool, job_id)
        return r if r["last_error"] else None

    row = await wait_for(refused)
    assert row["last_error"].startswith("refused:") and "loopback" in row["last_error"]
    assert row["state"] == "pending" and receiver.received == []
    await pool.execute("UPDATE webhook_deliveries SET state = 'failed' WHERE id = $1", row["id"])  # not for later tests


# --- the rules, unit level (a resolver that answers what the test says) --------------------
def _resolver(*addresses: str) -> ssrf.Resolve:
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


PROD = ssrf.UrlPolicy()
DEV = ssrf.UrlPolicy.for_environment("development")


@pytest.mark.parametrize(
    ("addresses", "why"),
    [
        (("10.1.2.3",), "private"),
        (("192.168.0.10",), "private"),
        (("172.16.5.5",), "private"),
        (("127.0.0.1",), "loopback"),
        (("::1",), "loopback"),
        (("169.254.169.254",), "metadata"),
        (("fd00:ec2::254",), "metadata"),
        (("169.254.10.10",), "link-local"),
        (("fe80::1",), "link-local"),
        (("100.64.0.1",), "CGNAT"),
        (("224.0.0.1",), "multicast"),
        (("ff02::1",), "multicast"),
        (("0.0.0.0",), "unspecified"),
        (("fc00::1",), "private"),
        (("::ffff:10.0.0.1",), "private"),
        (("64:ff9b::a9fe:a9fe",), "metadata"),
        (("2002:c0a8:0101::1",), "private"),
        (("93.184.216.34", "10.0.0.1"), "private"),  # one bad address refuses the name
    ],
)
async def test_names_resolving_to_unsafe_addresses_are_refused(addresses: tuple[str, ...], why: str) -> None:
    with pytest.raises(ssrf.UnsafeUrl, match=why):
        await ssrf.check("https://hooks.example.com/x", PROD, _resolver(*addresses))


async def test_public_names_pass_and_are_pinned() -> None:
    dest = await ssrf.check("https://hooks.example.com:8443/x?y=1", PROD, _resolver("93.184.216.34", "2606:2800::1"))
    assert (dest.host, dest.port, dest.addresses) == ("hooks.example.com", 8443, ("93.184.216.34", "2606:2800::1"))
    pinned = await ssrf.PinnedResolver(dest).resolve("hooks.example.com", 8443, 0)  # type: ignore[arg-type]
    assert [r["host"] for r in pinned] == ["93.184.216.34", "2606:2800::1"]
    with pytest.raises(OSError):
        await ssrf.PinnedResolver(dest).resolve("elsewhere.example.com", 443)


async def test_scheme_and_loopback_rules_by_environment() -> None:
    with pytest.raises(ssrf.UnsafeUrl, match="https"):
        await ssrf.check("http://hooks.example.com/", PROD, _resolver("93.184.216.34"))
    with pytest.raises(ssrf.UnsafeUrl, match="loopback"):
        await ssrf.check("https://localhost/", PROD, _resolver("127.0.0.1"))
    assert (await ssrf.check("http://localhost:9/", DEV, _resolver("127.0.0.1"))).addresses == ("127.0.0.1",)
    with pytest.raises(ssrf.UnsafeUrl, match="private"):  # development relaxes loopback only
        await ssrf.check("http://intranet/", DEV, _resolver("10.0.0.1"))
    with pytest.raises(ssrf.UnsafeUrl, match="metadata"):
        await ssrf.check("http://169.254.169.254/", DEV, _resolver())
    with pytest.raises(ssrf.UnsafeUrl, match="does not resolve"):
        await ssrf.check("https://nowhere.invalid/", PROD, _resolver())


def test_every_address_kind_is_classified() -> None:
    assert ssrf.address_refusal(ipaddress.ip_address("8.8.8.8"), PROD) is None
    assert ssrf.address_refusal(ipaddress.ip_address("2001:4860:4860::8888"), PROD) is None
    assert ssrf.address_refusal(ipaddress.ip_address("127.0.0.1"), DEV) is None
    assert ssrf.address_refusal(ipaddress.ip_address("::ffff:127.0.0.1"), DEV) is not None


def test_backoff_doubles_up_to_the_cap_and_retries_for_a_day() -> None:
    waits = [webhooks.backoff_seconds(n, 5.0, 3600.0) for n in range(1, 40)]
    assert 5.0 <= waits[0] <= 5.5 and 10.0 <= waits[1] <= 11.0
    assert max(waits) <= 3600 * 1.1
    # with the defaults, attempts go on past 24 h (the row is failed only by an attempt after the window)
    total, n = 0.0, 0
    while total < 86400:
        n += 1
        total += webhooks.backoff_seconds(n, 5.0, 3600.0)
    assert 25 <= n <= 40


def _admin(user: str = "ops-1") -> dict[str, str]:
    return {**headers(user), "X-Montage-Role": "admin"}


async def test_console_lists_and_resends_a_delivery(
    orchestrator_factory: Any, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    orch: Orchestrator = await orchestrator_factory(**FAST)
    job_id = (await (await orch.upload(webhook_url=receiver.url)).json())["job_id"]
    await orch.wait_final(job_id)
    await wait_for(lambda: asyncio.sleep(0, receiver.received))
    listed = await orch.session.get(f"{orch.url}/api/v1/admin/jobs/{job_id}/webhooks", headers=_admin())
    assert listed.status == 200
    [delivery] = (await listed.json())["deliveries"]
    assert delivery["event_type"] == "job.completed" and delivery["attempts"] == 1
    assert delivery["state"] == "delivered" and delivery["next_attempt_at"] is None
    detail = await (await orch.session.get(f"{orch.url}/api/v1/admin/jobs/{job_id}", headers=_admin())).json()
    assert [w["webhook_id"] for w in detail["webhooks"]] == [delivery["webhook_id"]]
    # not an admin: 403
    refused = await orch.session.post(
        f"{orch.url}/api/v1/admin/webhooks/{delivery['webhook_id']}/resend", headers=headers()
    )
    assert refused.status == 403
    resp = await orch.session.post(
        f"{orch.url}/api/v1/admin/webhooks/{delivery['webhook_id']}/resend", headers=_admin()
    )
    assert resp.status == 200 and (await resp.json())["state"] == "pending"
    await wait_for(lambda: asyncio.sleep(0, len(receiver.received) == 2))
    assert [wid for wid, _ in receiver.verified()] == [delivery["webhook_id"]] * 2
    missing = await orch.session.post(f"{orch.url}/api/v1/admin/webhooks/msg_{'0' * 32}/resend", headers=_admin())
    assert missing.status == 404
    actions = await pool.fetch(
        "SELECT outcome, job_id FROM admin_actions WHERE action = 'webhook.resend' AND actor = 'ops-1' ORDER BY id"
    )
    assert [(a["outcome"], a["job_id"] and str(a["job_id"])) for a in actions][-2:] == [
        ("done", job_id),
        ("not_found", None),
    ]


async def test_sigkill_during_delivery_redelivers_with_the_same_id(
    orchestrator_factory: Any,
    receiver: Receiver,
    pool: asyncpg.Pool,
    redis_url: str,
    database_url: str,
    namespace: str,
    keys: Any,
    redis: Any,
    tmp_path: Path,
) -> None:
    """An orchestrator process is SIGKILLed while its delivery is in flight (the receiver holds the
    request): the claimed row's lease runs out and another orchestrator sends it again, with the same
    webhook-id; a receiver that deduplicates on it records job.completed once."""
    storage_dir = tmp_path / "storage"
    port, ops_port = free_port(), free_port()
    # WEBHOOK_TIMEOUT_SECONDS=1: its claims' lease is 1 s + 5 s
    delivery = {"WEBHOOK_SECRET": SECRET, "WEBHOOK_TIMEOUT_SECONDS": "1", "WEBHOOK_POLL_SECONDS": "0.1"}
    env = process_env(redis_url, database_url, namespace, storage_dir, port, ops_port, **delivery)
    fakes = FakeStages(redis, keys, LocalStorage(storage_dir, "test-signing-key", "http://127.0.0.1:1"))
    await fakes.start()
    receiver.hold = asyncio.Event()  # the first request is never answered
    proc = spawn_orchestrator(env, tmp_path / "orchestrator.log")
    session = aiohttp.ClientSession()
    try:
        await wait_for(lambda: orchestrator_ready(session, f"http://127.0.0.1:{ops_port}"))
        form = upload_form(wav_bytes(), webhook_url=receiver.url)
        resp = await session.post(f"http://127.0.0.1:{port}/api/v1/upload-audio", data=form, headers=headers())
        assert resp.status == 201, await resp.text()
        job_id = (await resp.json())["job_id"]
        await wait_for(lambda: asyncio.sleep(0, receiver.received))  # the delivery is in flight
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        receiver.hold.set()
        receiver.hold = None
        await fakes.stop()
        await orchestrator_factory(workers=False, **FAST)  # another process's delivery loop

        async def delivered() -> asyncpg.Record | None:
            rows = await _deliveries(pool, job_id)
            return rows[0] if rows and rows[0]["state"] == "delivered" else None

        row = await wait_for(delivered, attempts=400, every=0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await session.close()
        await fakes.stop()
    verified = receiver.verified()
    assert [wid for wid, _ in verified] == [row["id"], row["id"]] and row["attempts"] == 2
    once = {wid: e for wid, e in verified}  # what a receiver deduplicating on webhook-id keeps
    assert [e["type"] for e in once.values()] == ["job.completed"]


async def test_a_users_default_webhook(orchestrator_factory: Any, receiver: Receiver) -> None:
    orch: Orchestrator = await orchestrator_factory(**FAST)
    url = f"{orch.url}/api/v1/webhook"
    user = headers("u-default")
    assert await (await orch.session.get(url, headers=user)).json() == {"webhook_url": None, "updated_at": None}
    refused = await orch.session.post(url, json={"webhook_url": "http://169.254.169.254/"}, headers=user)
    assert refused.status == 400 and "metadata" in (await refused.json())["error"]
    bad = await orch.session.post(url, data=b"{}", headers=user)
    assert bad.status == 400
    resp = await orch.session.post(url, json={"webhook_url": receiver.url}, headers=user)
    assert resp.status == 200 and (await resp.json())["webhook_url"] == receiver.url
    assert (await (await orch.session.get(url, headers=user)).json())["webhook_url"] == receiver.url
    job = await orch.upload(user="u-default")  # no webhook_url field: the default
    job_id = (await job.json())["job_id"]
    await wait_for(lambda: asyncio.sleep(0, receiver.received))
    [(_, event)] = receiver.verified()
    assert event["data"]["job_id"] == job_id
    assert (await orch.session.delete(url, headers=user)).status == 204
    assert (await (await orch.session.get(url, headers=user)).json())["webhook_url"] is None
    other = await (await orch.session.get(url, headers=headers("u-other"))).json()
    assert other["webhook_url"] is None
