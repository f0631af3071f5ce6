"""Each endpoint's success and every error status of the spec."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from montage_contracts import pricing
from montage_contracts.messages import ErrorInfo
from montage_contracts.pipeline import STAGES

from tests.orchestrator.conftest import (
    PROMPT,
    SECRET,
    Orchestrator,
    Reply,
    encoded_audio,
    headers,
    upload_form,
    wait_for,
    wav_bytes,
)
from tests.support import ops_server


async def test_upload_wav_creates_queued_job_and_dispatches(orchestrator_factory: Any, pool: asyncpg.Pool) -> None:
    """The user has a free slot: the job's turn comes at once; its deadline counts from then."""
    orch: Orchestrator = await orchestrator_factory(workers=False)
    resp = await orch.upload(user="u-up")
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert set(body) == {"job_id", "status", "estimated_cost", "created_at"}
    assert body["status"] == "queued" and body["created_at"].endswith("Z")
    # the configured prices times the planned calls: the local path's compute for a 2 s song
    assert Decimal(str(body["estimated_cost"])) == pricing.estimate(orch.deps.settings.price_card, 2.0) > 0
    row = await pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1::uuid", body["job_id"])
    assert row["status"] == "processing" and row["user_prompt"] == PROMPT and abs(row["audio_duration"] - 2.0) < 0.01
    assert row["started_at"] >= row["created_at"]
    assert (row["deadline_at"] - row["started_at"]).total_seconds() == orch.deps.settings.job_timeout_seconds
    assert row["audio_key"] == f"audio-uploads/u-up/{body['job_id']}/song.wav"
    assert await orch.deps.storage.exists(row["audio_key"])
    r: Any = orch.deps.redis

    async def sent() -> bool:  # its turn's task goes out right after the commit (by this request or the turn loop)
        return bool(await r.xlen(orch.deps.keys.stage_stream(STAGES[0])) == 1)

    await wait_for(sent)

    async def outbox_empty() -> bool:  # the entry is deleted in the transaction that sent it
        sql = "SELECT count(*) FROM orchestrator_outbox WHERE job_id = $1::uuid"
        return bool(await pool.fetchval(sql, body["job_id"]) == 0)

    await wait_for(outbox_empty)


async def test_upload_mp3_and_flac(orchestrator_factory: Any, tmp_path: Path, pool: asyncpg.Pool) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False)
    for fmt, mime in (("mp3", "audio/mpeg"), ("flac", "audio/flac")):
        data = encoded_audio(tmp_path, fmt)
        resp = await orch.upload(data, filename=f"tune.{fmt}", ctype=mime)
        assert resp.status == 201, await resp.text()
        key = await pool.fetchval("SELECT audio_key FROM jobs WHERE job_id = $1::uuid", (await resp.json())["job_id"])
        assert key.endswith(f"/tune.{fmt}")


async def test_upload_refuses_missing_or_wrong_internal_secret(orchestrator_factory: Any) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False)
    url = f"{orch.url}/api/v1/upload-audio"
    for h in ({}, {"X-Montage-User-Id": "u"}, headers(secret="wrong")):
        resp = await orch.session.post(url, data=upload_form(wav_bytes()), headers=h)
        assert resp.status == 401
        assert (await resp.json())["code"] == "UNAUTHORIZED"


async def test_upload_validation_errors(orchestrator_factory: Any) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False, max_audio_seconds=3)
    cases = [
        {"prompt": "x" * 49},
        {"prompt": "   " + "x" * 49 + "   "},  # 49 after trimming
        {"prompt": "x" * 501},
        {"data": b"ID3" + b"\x00" * 5000, "ctype": "audio/mpeg", "filename": "fake.mp3"},  # not audio
        {"data": b"<html>" * 2000, "ctype": "audio/wav", "filename": "x.wav"},
        {"data": wav_bytes(4.0)},  # over max_audio_seconds
    ]
    for case in cases:
        resp = await orch.upload(case.pop("data", None), **case)
        assert resp.status == 400, case
        body = await resp.json()
        assert body["code"] == "VALIDATION_ERROR" and body["retryable"] is False
    ok = await orch.upload(prompt="  " + "y" * 500 + "  ")
    assert ok.status == 201
    no_file = aiohttp.FormData()
    no_file.add_field("user_prompt", PROMPT)
    resp = await orch.session.post(f"{orch.url}/api/v1/upload-audio", data=no_file, headers=headers())
    assert resp.status == 400


async def test_upload_over_budget_is_402(orchestrator_factory: Any) -> None:
    # at $1 per compute second the 2 s song's local work is estimated above the $1 cap
    orch: Orchestrator = await orchestrator_factory(
        workers=False, job_cost_limit="1", local_compute_rate_usd_per_second=1.0
    )
    resp = await orch.upload()
    assert resp.status == 402
    assert (await resp.json())["code"] == "BUDGET_EXCEEDED"


async def test_oversize_upload_answered_before_the_body_is_sent(orchestrator_factory: Any) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False, max_upload_bytes=1024 * 1024)
    answered = asyncio.Event()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        head = b'--B\r\nContent-Disposition: form-data; name="audio_file"; filename="a.wav"\r\n\r\n'
        yield head
        chunk = b"\x00" * 65536
        for _ in range(64):  # 4 MB, well over the 1 MB limit
            if answered.is_set():
                return
            yield chunk
            sent += len(chunk)
            await asyncio.sleep(0.01)
        # never finish the body while the server has not answered
        await asyncio.wait_for(answered.wait(), 30)

    resp = await orch.session.post(
        f"{orch.url}/api/v1/upload-audio",
        data=body(),
        headers={**headers(), "Content-Type": "multipart/form-data; boundary=B"},
    )
    answered.set()
    assert resp.status == 413  # as the gateway answers a body over its own limit: one status per cause
    assert (await resp.json())["code"] == "VALIDATION_ERROR"
    assert sent < 4 * 1024 * 1024


async def test_filename_is_made_safe(orchestrator_factory: Any, pool: asyncpg.Pool) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False)
    data = wav_bytes()
    raw_name = b'filename="../../etc/pass\x01wd\\..\\evil name.wav"'
    encoded_name = b"filename*=UTF-8''..%2F..%2Fetc%2Fpass%01wd%5C..%5Cevil%20name.wav"
    bad = await _raw_upload(orch, data, raw_name)
    assert bad.status == 400 and (await bad.json())["code"] == "VALIDATION_ERROR"
    resp = await _raw_upload(orch, data, encoded_name)
    assert resp.status == 201, await resp.text()
    job_id = (await resp.json())["job_id"]
    key = await pool.fetchval("SELECT audio_key FROM jobs WHERE job_id = $1::uuid", job_id)
    assert key == f"audio-uploads/user-1/{job_id}/evil_name.wav"
    resp = await orch.upload(filename="..")
    key = await pool.fetchval("SELECT audio_key FROM jobs WHERE job_id = $1::uuid", (await resp.json())["job_id"])
    assert key.endswith("/audio.wav")


async def _raw_upload(orch: Orchestrator, data: bytes, name: bytes) -> aiohttp.ClientResponse:
    raw = (
        b'--B\r\nContent-Disposition: form-data; name="user_prompt"\r\n\r\n' + PROMPT.encode() + b"\r\n"
        b'--B\r\nContent-Disposition: form-data; name="audio_file"; ' + name + b"\r\n"
        b"Content-Type: audio/wav\r\n\r\n" + data + b"\r\n--B--\r\n"
    )
    return await orch.session.post(
        f"{orch.url}/api/v1/upload-audio",
        data=raw,
        headers={**headers(), "Content-Type": "multipart/form-data; boundary=B"},
    )


async def test_get_job_status_and_ownership(orchestrator_factory: Any) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False)
    job_id = await orch.create_job()
    body = await orch.job(job_id)
    assert set(body) == {
        "job_id", "status", "current_stage", "progress", "estimated_remaining", "total_cost",
        "video_url", "error_message", "error_code", "retryable", "created_at", "updated_at", "retry_of", "retried_by",
        "queue_position", "estimated_start", "poster_url",
    }  # fmt: skip
    assert body["status"] == "processing" and body["progress"] == 0 and body["estimated_remaining"] > 0
    assert body["queue_position"] is None and body["estimated_start"] is None  # not waiting
    assert body["error_code"] is None and body["retryable"] is False
    assert body["retry_of"] is None and body["retried_by"] is None
    assert body["created_at"].endswith("Z") and len(body["created_at"]) == len("2026-01-01T12:00:00.000Z")
    assert await orch.deps.redis.exists(orch.deps.keys.job_status_cache(job_id))  # cached
    other = await orch.session.get(f"{orch.url}/api/v1/jobs/{job_id}", headers=headers("someone-else"))
    assert other.status == 403
    for missing in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        resp = await orch.session.get(f"{orch.url}/api/v1/jobs/{missing}", headers=headers())
        assert resp.status == 404
    resp = await orch.session.get(f"{orch.url}/api/v1/jobs/{job_id}")
    assert resp.status == 401


async def test_list_jobs(orchestrator_factory: Any) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False)
    user = "lister"
    ids = [await orch.create_job(user=user) for _ in range(3)]
    await orch.session.post(f"{orch.url}/api/v1/jobs/{ids[0]}/cancel", headers=headers(user))
    url = f"{orch.url}/api/v1/jobs"
    body = await (await orch.session.get(url, headers=headers(user))).json()
    assert body["total"] == 3 and body["limit"] == 10 and body["offset"] == 0
    assert [j["job_id"] for j in body["jobs"]] == ids[::-1]  # newest first
    assert set(body["jobs"][0]) >= {"job_id", "status", "progress", "total_cost", "created_at", "completed_at"}
    body = await (await orch.session.get(url, params={"status": "failed"}, headers=headers(user))).json()
    assert [j["job_id"] for j in body["jobs"]] == [ids[0]] and body["total"] == 1
    body = await (await orch.session.get(url, params={"limit": "1", "offset": "1"}, headers=headers(user))).json()
    assert [j["job_id"] for j in body["jobs"]] == [ids[1]] and body["total"] == 3
    for params in ({"limit": "0"}, {"limit": "51"}, {"limit": "x"}, {"offset": "-1"}, {"status": "bogus"}):
        resp = await orch.session.get(url, params=params, headers=headers(user))
        assert resp.status == 400, params
    assert (await orch.session.get(url)).status == 401


async def test_cancel_queued_and_errors(orchestrator_factory: Any, pool: asyncpg.Pool) -> None:
    """A job waiting for its turn is cancelled without ever being dispatched."""
    orch: Orchestrator = await orchestrator_factory(workers=False, user_max_active_jobs=1)
    await orch.create_job(user="canceller")  # holds the user's one slot
    job_id = await orch.create_job(user="canceller")
    assert (await orch.job(job_id, user="canceller"))["status"] == "queued"  # now cached
    url = f"{orch.url}/api/v1/jobs/{job_id}/cancel"
    assert (await orch.session.post(url, headers=headers("intruder"))).status == 403
    resp = await orch.session.post(url, headers=headers("canceller"))
    assert resp.status == 200
    assert await resp.json() == {"job_id": job_id, "status": "failed", "message": "Job cancelled by user"}
    body = await orch.job(job_id, user="canceller")  # the cache never serves the old state
    assert body["status"] == "failed" and body["error_message"] == "Job cancelled by user"
    assert await pool.fetchval("SELECT count(*) FROM job_stages WHERE job_id = $1::uuid", job_id) == 0
    again = await orch.session.post(url, headers=headers("canceller"))
    assert again.status == 400
    missing = f"{orch.url}/api/v1/jobs/00000000-0000-0000-0000-000000000000/cancel"
    assert (await orch.session.post(missing, headers=headers())).status == 404
    assert (await orch.session.post(url)).status == 401


async def test_download(orch: Orchestrator) -> None:
    url = f"{orch.url}/api/v1/jobs/{{}}/download"
    job_id = await orch.create_job()
    await orch.wait_final(job_id)
    resp = await orch.session.get(url.format(job_id), headers=headers())
    assert resp.status == 200
    body = await resp.json()
    assert body["expires_in"] == 3600 and body["filename"] == f"music_video_{job_id}.mp4"
    assert f"/files/video-outputs/{job_id}/final_video.mp4?expires=" in body["download_url"]
    assert (await orch.session.get(url.format(job_id), headers=headers("x"))).status == 403
    orch.fakes.behaviour["audio_parser"] = lambda t: Reply(error=ErrorInfo(code="MODULE_FAILURE", message="x"))
    failed = await orch.create_job()
    await orch.wait_final(failed)
    assert (await orch.session.get(url.format(failed), headers=headers())).status == 404
    missing = "00000000-0000-0000-0000-000000000000"
    assert (await orch.session.get(url.format(missing), headers=headers())).status == 404
    await orch.deps.storage.delete([f"video-outputs/{job_id}/final_video.mp4"])
    gone = await orch.session.get(url.format(job_id), headers=headers())
    assert gone.status == 410 and (await gone.json())["code"] == "GONE"
    assert (await orch.session.get(url.format(job_id))).status == 401


async def test_internal_health(orchestrator_factory: Any) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False)
    await orch.create_job()
    resp = await orch.session.get(f"{orch.url}/internal/health", headers={"X-Montage-Internal": SECRET})
    assert resp.status == 200
    body = await resp.json()
    assert body["database"] == "connected" and body["redis"] == "connected" and body["issues"] == []
    assert body["queue"]["size"] == 1 and body["queue"]["stages"]["audio_parser"] == 1
    assert body["queue"]["active_jobs"] >= 1 and body["queue"]["workers"] == 0
    assert (await orch.session.get(f"{orch.url}/internal/health")).status == 401
    async with ops_server(orch.app) as ops:
        ready = await orch.session.get(f"{ops}/readyz")
        assert ready.status == 200


async def test_stage_gauges_show_work_waiting_with_no_worker(orchestrator_factory: Any) -> None:
    """The series the "work waiting, no workers" alert needs come from the orchestrator itself."""
    from montage_orchestrator.health import export_stage_gauges
    from prometheus_client import REGISTRY

    orch: Orchestrator = await orchestrator_factory(workers=False)
    await orch.create_job()

    async def gauged() -> bool:  # the job's task goes out right after its turn's commit
        await export_stage_gauges(orch.deps)
        return REGISTRY.get_sample_value("montage_stage_backlog", {"stage": "audio_parser"}) == 1

    await wait_for(gauged)
    workers = REGISTRY.get_sample_value("montage_stage_workers", {"stage": "audio_parser"})
    assert workers == 0
    assert REGISTRY.get_sample_value("montage_stage_backlog", {"stage": "composer"}) == 0
