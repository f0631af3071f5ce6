"""(1) A song goes in, the spec's events come out in order, and a playable video of that song comes back."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from montage_cli.sse import job_events

from tests.e2e.flows import FinishedJob, check_spec_order
from tests.e2e.media import audio_similarity, decodes, probe
from tests.stack import ClientFactory

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_upload_answers_201_with_the_job(finished_job: FinishedJob) -> None:
    body = finished_job.created
    assert body["status"] == "queued"
    assert set(body) >= {"job_id", "status", "estimated_cost", "created_at"}
    assert 0 < float(body["estimated_cost"]) <= 50  # development budget


def test_events_follow_the_spec_and_end_completed(finished_job: FinishedJob) -> None:
    check_spec_order(finished_job.events)


async def test_status_and_listing_show_the_completed_job(finished_job: FinishedJob, as_user: ClientFactory) -> None:
    client = await as_user(finished_job.user)
    job = await client.job(finished_job.job_id)
    assert job["status"] == "completed" and job["progress"] == 100
    assert job["video_url"] and job["error_message"] is None
    assert float(job["total_cost"]) == pytest.approx(float(finished_job.events[-1].json()["total_cost"]), abs=0.01)
    listed = await client.jobs(status="completed")
    assert finished_job.job_id in [j["job_id"] for j in listed["jobs"]]
    assert listed["total"] >= 1 and listed["limit"] == 10 and listed["offset"] == 0


async def test_download_is_a_signed_expiring_url(finished_job: FinishedJob, as_user: ClientFactory) -> None:
    client = await as_user(finished_job.user)
    info = await client.download_info(finished_job.job_id)
    assert info["expires_in"] == 3600
    assert info["filename"] == f"music_video_{finished_job.job_id}.mp4"
    url = info["download_url"]
    query = parse_qs(urlsplit(url).query)
    assert query.get("expires") and query.get("sig"), url
    forged = url.replace(query["sig"][0], "0" * len(query["sig"][0]))
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(url) as ok:
            assert ok.status == 200 and (await ok.read())[4:8] == b"ftyp"
        async with anonymous.get(forged) as bad:
            assert bad.status in (401, 403), bad.status


def test_video_decodes_and_carries_the_song(finished_job: FinishedJob, song: Path) -> None:
    assert finished_job.video is not None
    info = probe(finished_job.video)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert (info.width, info.height) == (160, 90)
    song_seconds = probe_audio_seconds(song)
    assert abs(info.duration - song_seconds) < 1.0, (info.duration, song_seconds)
    assert decodes(finished_job.video) == ""
    assert audio_similarity(song, finished_job.video) > 0.9


def probe_audio_seconds(path: Path) -> float:
    from mutagen import File

    return float(File(path).info.length)


async def test_resume_with_last_event_id_gives_exactly_the_rest(
    finished_job: FinishedJob, as_user: ClientFactory
) -> None:
    client = await as_user(finished_job.user)
    logged = [e for e in finished_job.events if e.id]
    cut = len(logged) // 2
    rest = [e async for e in job_events(client, finished_job.job_id, last_event_id=logged[cut].id)]
    # the job as it is now, its id the resume point, then the rest of the log
    assert rest[0].event == "state" and rest[0].id == logged[cut].id
    assert [(e.id, e.event, e.data) for e in rest[1:]] == [(e.id, e.event, e.data) for e in logged[cut + 1 :]]
