"""The admin API through the real gateway in front of the real services (``tests/stack.py``):
every route for an admin (bodies decoded strictly as the documented Structs), 403 for any other
user on every route and on the page, 401 without a token, and actions on entries that no longer
exist. Dead letters that need no real job are written into the dead-letter stream in the
runtime's own format (a look behind the gateway, said where it happens).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from montage_cli.client import MontageClient
from montage_common.redis import create_redis
from montage_common.settings import CommonSettings
from montage_contracts import api
from montage_contracts.keys import Keys
from montage_contracts.messages import StageResult, StageTask, encode
from montage_contracts.models import ComposerInput
from montage_contracts.routes import ROUTES, Auth, Service, route

from tests.admin.conftest import (
    ADMIN_API,
    Clients,
    admin_token,
    dead_letter_a_composer_task,
    status_of,
    submit,
    wait_until,
)
from tests.e2e.flows import FinishedJob, follow_to_end
from tests.stack import RunningStack, unique

pytestmark = [pytest.mark.e2e]
# The admin API forwarded to the internal services: (method, path, service), from the route table.
API_ROUTES = [
    (r.method, r.path, r.service) for r in ROUTES if r.auth is Auth.ADMIN and r.service is not Service.GATEWAY
]
ME = route("getAdminMe").path
PAGE = route("getAdminConsole").path
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def concrete(path: str) -> str:
    path = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)  # route patterns: {entry_id:[0-9]+-[0-9]+}
    path = path.replace("{stream}", "composer").replace("{entry_id}", "1-0").replace("{job_id}", str(uuid.uuid4()))
    return path.replace("{webhook_id}", "msg_" + "0" * 32)


def timestamps(body: Any, key: str = "") -> list[str]:
    """Every time in a JSON body (keys ``at`` and ``*_at``), at any depth."""
    if isinstance(body, dict):
        return [t for k, v in body.items() for t in timestamps(v, k)]
    if isinstance(body, list):
        return [t for v in body for t in timestamps(v, key)]
    return [body] if (key == "at" or key.endswith("_at")) and body is not None else []


def decode(body: Any, kind: type[Any]) -> Any:
    """The body as the documented Struct; every time in it written as the public API writes
    times (``api.timestamp``: UTC, milliseconds, ``Z``)."""
    for moment in timestamps(body):
        assert isinstance(moment, str) and TIMESTAMP.fullmatch(moment), moment
        assert api.timestamp(datetime.fromisoformat(moment)) == moment
    return msgspec.convert(body, kind, strict=False)


async def fake_dead_letter(stack: RunningStack, stream_name: str, payload: bytes, code: str = "BOOM") -> str:
    """A dead letter as ``StreamConsumer`` writes it (behind the gateway: Redis directly)."""
    keys = Keys(stack.namespace)
    stream = keys.results_stream() if stream_name == "results" else keys.stage_stream(stream_name)
    redis = create_redis(stack.redis_url)
    try:
        history = msgspec.json.encode([f"attempt 1: {code}: it broke", f"attempt 2: {code}: it broke again"])
        entry = await redis.xadd(
            keys.dead_letter_stream(stream),
            {"id": uuid.uuid4().hex, "a": "1", "m": payload, "error": "it broke again", "code": code,
             "source": "1-0", "history": history},
        )  # fmt: skip
        return entry.decode() if isinstance(entry, bytes) else str(entry)
    finally:
        await redis.aclose()


def composer_task(job_id: str, dispatch: int = 1) -> bytes:
    task = StageTask(
        job_id=job_id,
        user_id="someone",
        stage="composer",
        input=ComposerInput(clips=api_clips(), audio_key="audio-uploads/x/y/song.mp3", transitions=[], beats=[],
                            duration=1.0),
        dispatch=dispatch,
    )  # fmt: skip
    return encode(task)


def api_clips() -> Any:
    from montage_contracts.models import Clips

    return Clips(clips=[], failed=[])


# --- who may ----------------------------------------------------------------------------------
async def test_non_admin_gets_403_on_the_page_and_every_admin_route(clients: Clients, e2e_stack: RunningStack) -> None:
    routes = [(m, concrete(p)) for m, p, _ in API_ROUTES] + [("GET", ME), ("GET", PAGE)]
    for method, path in routes:
        status, body = await status_of(clients.user, method, path)
        assert status == 403, (method, path, status, body)
        assert body["code"] == "FORBIDDEN"
        # a client cannot claim the role itself: the gateway drops X-Montage-* headers
        status, _ = await status_of(clients.user, method, path, headers={"X-Montage-Role": "admin"})
        assert status == 403, (method, path)
    # the page in a browser's terms: HTML, still 403
    async with clients.session.get(
        f"{e2e_stack.url}{PAGE}", headers={**clients.user.headers(), "Accept": "text/html"}
    ) as r:
        assert r.status == 403 and "text/html" in r.headers["Content-Type"]
        assert 'data-status="403"' in await r.text()
    # a role that is not the admin one is not enough
    other = await admin_token(clients.session, e2e_stack.url, unique("support"), role="support")
    async with clients.session.get(
        f"{e2e_stack.url}{ADMIN_API}/queues", headers={"Authorization": f"Bearer {other}"}
    ) as r:
        assert r.status == 403


async def test_no_token_is_401(clients: Clients, e2e_stack: RunningStack) -> None:
    for method, path, _ in API_ROUTES:
        async with clients.session.request(method, f"{e2e_stack.url}{concrete(path)}") as r:
            assert r.status == 401, (method, path)
    async with clients.session.get(f"{e2e_stack.url}{PAGE}", headers={"Accept": "text/html"}) as r:
        assert r.status == 401 and 'data-status="401"' in await r.text()


async def test_internal_services_refuse_admin_routes_without_the_role(e2e_stack: RunningStack) -> None:
    """Even with the internal credential, the orchestrator and ragnarok-proxy want the role header."""
    import aiohttp

    headers = {"X-Montage-Internal": CommonSettings().internal_secret, "X-Montage-User-Id": "someone"}
    urls = {
        Service.ORCHESTRATOR: f"http://127.0.0.1:{e2e_stack.stack.orchestrator_port}",
        Service.RAGNAROK: f"http://127.0.0.1:{e2e_stack.stack.proxy_port}",
    }
    async with aiohttp.ClientSession() as s:
        for method, path, upstream in API_ROUTES:
            async with s.request(method, urls[upstream] + concrete(path), headers=headers) as r:
                assert r.status == 403, (method, path, r.status)


async def test_the_page_is_served_to_an_admin(clients: Clients, e2e_stack: RunningStack) -> None:
    status, body = await status_of(clients.admin, "GET", PAGE)
    assert status == 200 and "<title>" in body
    cookie = {"Cookie": f"montage_admin={clients.admin.token}", "Accept": "text/html"}
    async with clients.session.get(f"{e2e_stack.url}{PAGE}", headers=cookie) as r:
        assert r.status == 200 and r.headers["X-Frame-Options"] == "DENY"
    me = decode(await clients.admin.call("GET", ME), api.AdminMe)
    assert me.user_id == clients.admin_user and me.admin


# --- queues, jobs, RAGNAROK, the log -------------------------------------------------------------
async def test_queues_show_every_stage(clients: Clients, finished_job: FinishedJob) -> None:
    raw = await clients.admin.call("GET", f"{ADMIN_API}/queues")
    assert timestamps(raw) == [raw["generated_at"]]  # milliseconds, like every time below (decode)
    body = decode(raw, api.AdminQueues)
    assert [q.name for q in body.stages] == list(api.StageName.__args__)  # type: ignore[attr-defined]
    for q in body.stages:
        assert q.consumers and any(c.alive for c in q.consumers), q
        assert q.completed >= 1 and q.p95_seconds is not None and q.throughput_per_minute > 0, q
    assert body.results.name == "results"
    status, err = await status_of(clients.admin, "GET", f"{ADMIN_API}/queues", params={"window": "5"})
    assert status == 400 and err["code"] == "VALIDATION_ERROR"


async def test_job_search_detail_and_cancel(clients: Clients, finished_job: FinishedJob, e2e_stack: RunningStack,
                                            song: Path) -> None:  # fmt: skip
    by_user = decode(await clients.admin.call("GET", f"{ADMIN_API}/jobs", params={"q": finished_job.user}),
                     api.AdminJobs)  # fmt: skip
    assert [j.job_id for j in by_user.jobs] == [finished_job.job_id]
    by_id = decode(await clients.admin.call("GET", f"{ADMIN_API}/jobs", params={"q": finished_job.job_id}),
                   api.AdminJobs)  # fmt: skip
    assert by_id.total == 1 and by_id.jobs[0].user_id == finished_job.user
    raw = await clients.admin.call("GET", f"{ADMIN_API}/jobs/{finished_job.job_id}")
    # times from Postgres, from event ids and from file modification times, all checked by decode
    assert raw["events"][0]["at"] in timestamps(raw) and raw["files"][0]["modified_at"] in timestamps(raw)
    assert raw["costs"][0]["created_at"] in timestamps(raw) and raw["job"]["created_at"] in timestamps(raw)
    detail = decode(raw, api.AdminJobDetail)
    assert [s.stage for s in detail.stages] == list(api.StageName.__args__)  # type: ignore[attr-defined]
    assert all(s.status == "completed" and s.duration_seconds is not None for s in detail.stages)
    assert {e.event for e in detail.events} >= {"stage_update", "progress", "completed"}
    assert detail.costs and any(f.key.startswith("video-outputs/") for f in detail.files)
    assert not detail.cancellable

    missing = str(uuid.uuid4())
    assert (await status_of(clients.admin, "GET", f"{ADMIN_API}/jobs/{missing}"))[0] == 404
    assert (await status_of(clients.admin, "POST", f"{ADMIN_API}/jobs/{missing}/cancel"))[0] == 404
    # a finished job: the owner's answer to the same cause (400, JobNotCancellable), logged as refused
    status, body = await status_of(clients.admin, "POST", f"{ADMIN_API}/jobs/{finished_job.job_id}/cancel")
    assert status == 400 and body["code"] == "VALIDATION_ERROR" and "cannot be cancelled" in body["error"]

    job_id = await submit(e2e_stack, clients.session, song, unique("cancel-me"))
    cancelled = decode(await clients.admin.call("POST", f"{ADMIN_API}/jobs/{job_id}/cancel"), api.Cancelled)
    assert cancelled.status == "failed"
    after = await clients.admin.call("GET", f"{ADMIN_API}/jobs/{job_id}")
    assert after["job"]["error_code"] == "CANCELLED" and "operator" in after["job"]["error_message"]
    log = decode(await clients.admin.call("GET", f"{ADMIN_API}/actions", params={"job_id": job_id}), api.AdminActions)
    assert [(a.action, a.outcome, a.actor) for a in log.actions] == [("job.cancel", "done", clients.admin_user)]
    assert (await status_of(clients.admin, "GET", f"{ADMIN_API}/jobs", params={"status": "nope"}))[0] == 400


async def test_ragnarok_jobs_are_listed(clients: Clients, e2e_stack: RunningStack) -> None:
    submitted = await clients.user.call(
        "POST", "/api/nexus/ragnarok/generate/enriched", json={"company_name": unique("Acme"), "industry": "Tools"}
    )
    body = decode(await clients.admin.call("GET", f"{ADMIN_API}/ragnarok/jobs", params={"q": submitted["job_id"]}),
                  api.AdminNexusJobs)  # fmt: skip
    assert len(body.jobs) == 1
    job = body.jobs[0]
    assert job.created_at and job.updated_at  # both written by api.timestamp (decode)
    assert (job.job_id, job.workflow_id, job.trace_id) == (
        submitted["job_id"], submitted["workflow_id"], submitted["trace_id"])  # fmt: skip
    assert job.user_id == clients.user_name and sum(body.counts.values()) >= 1
    assert (await status_of(clients.admin, "GET", f"{ADMIN_API}/ragnarok/jobs", params={"status": "x"}))[0] == 400


# --- dead letters -------------------------------------------------------------------------------
async def test_actions_on_dead_letters_that_do_not_exist(clients: Clients) -> None:
    for method, path in [
        ("POST", f"{ADMIN_API}/dead-letters/composer/1-0/retry"),
        ("DELETE", f"{ADMIN_API}/dead-letters/composer/1-0"),
        ("POST", f"{ADMIN_API}/dead-letters/results/1-0/retry"),
        ("DELETE", f"{ADMIN_API}/dead-letters/results/1-0"),
    ]:
        status, body = await status_of(clients.admin, method, path)
        assert status == 404 and body["code"] == "NOT_FOUND", (method, path)
    for method, path in [
        ("POST", f"{ADMIN_API}/dead-letters/nowhere/1-0/retry"),
        ("DELETE", f"{ADMIN_API}/dead-letters/composer/not-an-id"),
        ("POST", f"{ADMIN_API}/dead-letters/nowhere/retry-all"),
    ]:
        assert (await status_of(clients.admin, method, path))[0] == 404, (method, path)
    log = decode(await clients.admin.call("GET", f"{ADMIN_API}/actions"), api.AdminActions)
    mine = [(a.action, a.target, a.outcome) for a in log.actions if a.actor == clients.admin_user]
    assert ("dead_letter.retry", "composer/1-0", "not_found") in mine
    assert ("dead_letter.delete", "results/1-0", "not_found") in mine


async def test_dead_letters_that_cannot_be_retried_are_refused_and_can_be_deleted(
    clients: Clients, e2e_stack: RunningStack, finished_job: FinishedJob
) -> None:
    gone = await fake_dead_letter(e2e_stack, "composer", composer_task(str(uuid.uuid4())))
    done = await fake_dead_letter(e2e_stack, "composer", composer_task(finished_job.job_id))
    junk = await fake_dead_letter(e2e_stack, "composer", b"not a task")
    listed = decode(await clients.admin.call("GET", f"{ADMIN_API}/dead-letters", params={"stream": "composer"}),
                    api.AdminDeadLetters)  # fmt: skip
    by_id = {d.entry_id: d for d in listed.dead_letters}
    assert {gone, done, junk} <= set(by_id)
    assert all(d.dead_at for d in listed.dead_letters)  # from the entry id, as api.timestamp writes it (decode)
    assert by_id[done].attempts == 2 and len(by_id[done].history) == 2 and by_id[done].code == "BOOM"
    assert by_id[done].job_status == "completed" and by_id[gone].job_status is None

    for entry, reason in [(gone, "no longer exists"), (done, "completed"), (junk, "not a stage task")]:
        status, body = await status_of(clients.admin, "POST", f"{ADMIN_API}/dead-letters/composer/{entry}/retry")
        assert status == 409 and reason in body["error"], (entry, body)
    after = await clients.admin.call("GET", f"{ADMIN_API}/jobs/{finished_job.job_id}")
    assert after["job"]["status"] == "completed"  # untouched

    outcome = decode(await clients.admin.call("POST", f"{ADMIN_API}/dead-letters/composer/retry-all"),
                     api.AdminRetryAll)  # fmt: skip
    assert outcome.retried == 0 and {o.entry_id for o in outcome.outcomes} >= {gone, done, junk}
    for entry in (gone, done, junk):
        deleted = decode(await clients.admin.call("DELETE", f"{ADMIN_API}/dead-letters/composer/{entry}"),
                         api.AdminDeleted)  # fmt: skip
        assert deleted.outcome == "deleted"
        assert (await status_of(clients.admin, "DELETE", f"{ADMIN_API}/dead-letters/composer/{entry}"))[0] == 404
    log = decode(await clients.admin.call("GET", f"{ADMIN_API}/actions", params={"limit": "100"}), api.AdminActions)
    mine = {(a.action, a.target, a.outcome) for a in log.actions if a.actor == clients.admin_user}
    assert ("dead_letter.retry", f"composer/{done}", "conflict") in mine
    assert ("dead_letter.delete", f"composer/{junk}", "done") in mine


async def test_a_results_dead_letter_is_requeued(clients: Clients, e2e_stack: RunningStack,
                                                 finished_job: FinishedJob) -> None:  # fmt: skip
    """A stale result goes back onto the results stream; the pipeline acks and ignores it."""
    stale = encode(StageResult(job_id=finished_job.job_id, stage="composer", dispatch=99, ok=False))
    entry = await fake_dead_letter(e2e_stack, "results", stale)
    body = decode(await clients.admin.call("POST", f"{ADMIN_API}/dead-letters/results/{entry}/retry"),
                  api.AdminRetried)  # fmt: skip
    assert body.outcome == "requeued" and body.new_entry_id
    assert (await status_of(clients.admin, "POST", f"{ADMIN_API}/dead-letters/results/{entry}/retry"))[0] == 404

    async def handled() -> bool:
        q = await clients.admin.call("GET", f"{ADMIN_API}/queues")
        return bool(q["results"]["pending"] == 0 and q["results"]["waiting"] == 0)

    await wait_until(handled)
    job = await clients.admin.call("GET", f"{ADMIN_API}/jobs/{finished_job.job_id}")
    assert job["job"]["status"] == "completed"


async def test_a_dead_lettered_stage_is_retried_and_the_job_completes(
    clients: Clients, e2e_stack: RunningStack, song: Path
) -> None:
    dead = await dead_letter_a_composer_task(e2e_stack, clients.admin, clients.session, song)
    try:
        listed = await clients.admin.call("GET", f"{ADMIN_API}/dead-letters", params={"stream": "composer"})
        entry = next(d for d in listed["dead_letters"] if d["entry_id"] == dead.entry_id)
        assert entry["code"] == "NOT_FOUND" and entry["job_status"] == "failed" and entry["history"]
        detail = await clients.admin.call("GET", f"{ADMIN_API}/jobs/{dead.job_id}")
        assert [d["entry_id"] for d in detail["dead_letters"]] == [dead.entry_id]
        assert detail["job"]["error_message"] and any(e["where"] == "composer" for e in detail["errors"])
    finally:
        dead.restore_clips()
    retried = decode(
        await clients.admin.call("POST", f"{ADMIN_API}/dead-letters/composer/{dead.entry_id}/retry"), api.AdminRetried
    )
    assert retried.outcome == "retried" and retried.job_status == "processing"
    status, _ = await status_of(clients.admin, "POST", f"{ADMIN_API}/dead-letters/composer/{dead.entry_id}/retry")
    assert status == 404  # the entry is gone: retried once only

    async def completed() -> bool:
        detail = await clients.admin.call("GET", f"{ADMIN_API}/jobs/{dead.job_id}")
        assert detail["job"]["status"] != "failed", detail["job"]
        return bool(detail["job"]["status"] == "completed")

    await wait_until(completed)
    detail = await clients.admin.call("GET", f"{ADMIN_API}/jobs/{dead.job_id}")
    composer = next(s for s in detail["stages"] if s["stage"] == "composer")
    assert composer["status"] == "completed" and composer["dispatch"] == 2
    assert [(a["action"], a["outcome"], a["actor"]) for a in detail["actions"]] == [
        ("dead_letter.retry", "done", clients.admin_user)
    ]
    # the owner sees a completed job with a video
    owner = await status_of(
        clients.user.__class__(clients.session, e2e_stack.url,
                               await admin_token(clients.session, e2e_stack.url, dead.user, role=None)),
        "GET", f"/api/v1/jobs/{dead.job_id}",
    )  # fmt: skip
    assert owner[0] == 200 and owner[1]["status"] == "completed" and owner[1]["video_url"]
    # replayed from the start, the job's log has one end: the old error was withdrawn on retry
    owner_client = MontageClient(
        clients.session, e2e_stack.url, await admin_token(clients.session, e2e_stack.url, dead.user, role=None)
    )
    events = [e.event for e in await follow_to_end(owner_client, dead.job_id, limit=60)]
    assert events[-1] == "completed" and "error" not in events, events
    assert "message" in events and events.count("completed") == 1
