"""Previews (issue #25): a job's stills and clips as ``preview`` events before ``completed``, their
signed URLs serving real PNG and MP4 files, ``GET /jobs/{id}/assets`` listing them with the video
and its poster, and ``poster_url`` a real frame of the video. Uses the suite's shared finished job
(``finished_job``: its events are its whole log, read from ``0-0``), so it adds no job of its own."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import aiohttp
import pytest
from montage_cli.errors import ApiError

from tests.e2e.flows import FinishedJob
from tests.e2e.media import decodes, ffmpeg, probe
from tests.stack import ClientFactory, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff"


async def _fetch(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def _previews(job: FinishedJob) -> list[dict[str, object]]:
    return [e.json() for e in job.events if e.event == "preview"]


def test_preview_events_come_before_completed_for_every_still_and_clip(finished_job: FinishedJob) -> None:
    names = [e.event for e in finished_job.events]
    previews = _previews(finished_job)
    stills = [p for p in previews if p["kind"] == "still"]
    clips = [p for p in previews if p["kind"] == "clip"]
    assert stills and clips, names
    assert max(i for i, n in enumerate(names) if n == "preview") < names.index("completed")
    # one per scene still (0..n-1 in plan order) and per clip; every event has an id (logged, resumable)
    scene_idx = sorted(int(str(p["index"])) for p in stills if p["subject"] == "scene")
    assert scene_idx == list(range(len(scene_idx))), stills
    clip_idx = sorted(int(str(p["index"])) for p in clips)
    assert clip_idx == sorted(set(clip_idx)), clips
    assert all(p["subject"] is None for p in clips)
    assert all(e.id for e in finished_job.events if e.event == "preview")
    # stills come while reference_generator runs, clips while video_generator runs
    first_clip = next(
        i for i, e in enumerate(finished_job.events) if e.event == "preview" and e.json()["kind"] == "clip"
    )
    ref_done = next(
        i for i, e in enumerate(finished_job.events)
        if e.event == "stage_update" and (e.json()["stage"], e.json()["status"]) == ("reference_generator", "completed")
    )  # fmt: skip
    assert ref_done < first_clip


async def test_preview_urls_serve_a_png_and_an_mp4_that_decode(finished_job: FinishedJob, tmp_path: Path) -> None:
    previews = _previews(finished_job)
    still = next(p for p in previews if p["kind"] == "still")
    clip = next(p for p in previews if p["kind"] == "clip")
    status, ctype, body = await _fetch(str(still["url"]))
    assert status == 200 and body.startswith(PNG) and ctype == "image/png", (status, ctype, body[:8])
    (tmp_path / "still.png").write_bytes(body)
    assert decodes(tmp_path / "still.png") == ""
    status, ctype, body = await _fetch(str(clip["url"]))
    assert status == 200 and body[4:8] == b"ftyp" and ctype == "video/mp4", (status, ctype, body[:12])
    (tmp_path / "clip.mp4").write_bytes(body)
    assert decodes(tmp_path / "clip.mp4") == ""


async def test_assets_list_the_previews_then_the_video_and_poster(
    finished_job: FinishedJob, as_user: ClientFactory, tmp_path: Path
) -> None:
    client = await as_user(finished_job.user)
    body = await client.assets(finished_job.job_id)
    assert body["job_id"] == finished_job.job_id and body["expires_in"] == 3600
    listed = [(a["kind"], a["subject"], a["index"]) for a in body["assets"]]
    announced = sorted((str(p["kind"]), p["subject"], int(str(p["index"]))) for p in _previews(finished_job))
    assert sorted(x for x in listed if x[0] in ("still", "clip")) == sorted(set(announced))  # type: ignore[type-var]
    assert listed[-2:] == [("video", None, 0), ("poster", None, 0)], listed
    kinds = [k for k, _, _ in listed]
    assert kinds == sorted(kinds, key=["still", "clip", "video", "poster"].index), kinds
    assert all(a["created_at"].endswith("Z") for a in body["assets"])
    # every URL serves its file (the stills and clips outlive the job's deleted intermediates)
    for asset in body["assets"]:
        status, _, data = await _fetch(asset["url"])
        assert status == 200, asset
        magic = {"still": data.startswith(PNG), "clip": data[4:8] == b"ftyp", "video": data[4:8] == b"ftyp",
                 "poster": data.startswith(JPEG)}  # fmt: skip
        assert magic[asset["kind"]], (asset["kind"], data[:12])


async def test_status_has_a_poster_url_that_is_a_frame_of_the_video(
    finished_job: FinishedJob, as_user: ClientFactory, tmp_path: Path
) -> None:
    client = await as_user(finished_job.user)
    job = await client.job(finished_job.job_id)
    assert job["poster_url"], job
    status, ctype, data = await _fetch(job["poster_url"])
    assert status == 200 and data.startswith(JPEG) and ctype == "image/jpeg", (status, ctype)
    poster = tmp_path / "poster.jpg"
    poster.write_bytes(data)
    assert decodes(poster) == ""
    assert finished_job.video is not None
    video = probe(finished_job.video)
    assert frame_size(poster) == (video.width, video.height)
    assert finished_job.events[-1].json().get("poster_url")  # the completed event carries one too


def frame_size(path: Path) -> tuple[int, int]:
    text = subprocess.run(
        [ffmpeg(), "-hide_banner", "-i", str(path)], capture_output=True, text=True, check=False, timeout=30
    ).stderr
    found = re.search(r"Video: \w+.*?, (\d{2,5})x(\d{2,5})", text)
    assert found, text
    return int(found.group(1)), int(found.group(2))


async def test_assets_are_the_owners_only(finished_job: FinishedJob, as_user: ClientFactory) -> None:
    other = await as_user(unique("mallory"))
    with pytest.raises(ApiError) as refused:
        await other.assets(finished_job.job_id)
    assert refused.value.status == 403
    with pytest.raises(ApiError) as unknown:
        await other.assets("00000000-0000-4000-8000-000000000000")
    assert unknown.value.status == 404
