"""One job's clips fanned out over every video_generator worker: real processes, Redis and ffmpeg.

Each test starts ``python -m montage_stages --stage video_generator`` processes on the session's
Redis (a namespace per test) and adds the job's task to the stage stream as the orchestrator does;
who rendered which clip comes from the clip records (``keys.clip_records(job_id)``).
"""

from __future__ import annotations

import itertools
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from montage_common.budget import BudgetLedger
from montage_common.storage import LocalStorage
from montage_contracts import pricing
from montage_contracts.errors import ErrorCode
from montage_contracts.pipeline import spec
from redis.asyncio import Redis

from .fanout_harness import STAGE, WORKER_ENV, Workers, prompts, write_ffmpeg_wrapper
from .media import decode_errors

CLIPS = 12


@pytest.fixture
async def workers(redis: Redis, redis_url: str, namespace: str, tmp_path: Path) -> AsyncIterator[Workers]:
    w = Workers(redis, redis_url, namespace, tmp_path / "storage", tmp_path / "logs")
    try:
        yield w
    finally:
        w.stop_all()


def clip_costs(costs: list[object]) -> list[str]:
    return [c.call_id for c in costs if ":clip_" in c.call_id]  # type: ignore[attr-defined]


async def test_one_jobs_clips_are_rendered_by_both_workers(workers: Workers, tmp_path: Path) -> None:
    await workers.start("a")
    await workers.start("b")
    names = {workers.consumer("a"): "a", workers.consumer("b"): "b"}

    await workers.dispatch("job-both", prompts(CLIPS))
    outcome = await workers.outcome("job-both")

    assert outcome.result.ok, outcome.result.error
    clips = outcome.clips
    assert [c.index for c in clips.clips] == list(range(CLIPS)) and not clips.failed
    records = await workers.records("job-both")
    by_worker = Counter(names[r.worker] for r in records if r.ok)
    assert sum(by_worker.values()) == CLIPS
    assert by_worker["a"] >= 1 and by_worker["b"] >= 1, by_worker
    # each clip was rendered once, and its cost is reported once, in the result and live
    assert len({r.sig for r in records}) == len(records) == CLIPS
    expected = sorted(f"job-both:{STAGE}:clip_{i}" for i in range(CLIPS))
    assert sorted(clip_costs(outcome.result.costs)) == expected
    assert sorted(clip_costs([c.cost for c in outcome.costs])) == expected
    assert f"Rendering clip {CLIPS} of {CLIPS}" in outcome.progress
    # the clips tile the song and decode
    assert all(a.end == b.start for a, b in itertools.pairwise(clips.clips))
    storage = LocalStorage(workers.storage_dir, "k", "http://127.0.0.1:1")
    for clip in clips.clips:
        assert await decode_errors(storage.path_of(clip.key)) == ""


async def test_a_failed_clip_goes_to_its_neighbour(workers: Workers, tmp_path: Path) -> None:
    """Clip 1's encode fails wherever it runs (it opens with a dissolve, so it is tried again as a
    cut first); clip 0 then covers its span, as when one process rendered every clip."""
    fail_at = 1
    wrapper = write_ffmpeg_wrapper(tmp_path / "ffmpeg.sh", tmp_path / "marks", fail_clip=fail_at)
    await workers.start("a", FFMPEG_PATH=str(wrapper))
    await workers.start("b", FFMPEG_PATH=str(wrapper))

    await workers.dispatch("job-fail", prompts(6))
    outcome = await workers.outcome("job-fail")

    assert outcome.result.ok, outcome.result.error
    clips = outcome.clips
    assert [f.index for f in clips.failed] == [fail_at]
    assert "no encoder for this clip" in clips.failed[0].error
    assert [c.index for c in clips.clips] == [0, 2, 3, 4, 5]
    assert (clips.clips[0].start, clips.clips[0].end) == (0.0, 2.0)  # clip 0 covers clip 1's second
    assert all(a.end == b.start for a, b in itertools.pairwise(clips.clips))
    assert len(clips.clips) >= spec(STAGE).min_clips
    costs = clip_costs(outcome.result.costs)
    assert sorted(costs) == sorted(f"job-fail:{STAGE}:clip_{c.index}" for c in clips.clips)  # one per clip
    failed_records = [r for r in await workers.records("job-fail") if not r.ok]
    assert {r.index for r in failed_records} == {fail_at} and len(failed_records) == 2  # dissolve, then cut
    storage = LocalStorage(workers.storage_dir, "k", "http://127.0.0.1:1")
    for clip in clips.clips:
        assert await decode_errors(storage.path_of(clip.key)) == ""


async def test_too_few_clips_still_fail_the_rule(workers: Workers, tmp_path: Path) -> None:
    """Clips whose encodes fail count against the spec's minimum of 3 exactly as before."""
    wrapper = tmp_path / "ffmpeg.sh"
    marks = tmp_path / "marks"
    write_ffmpeg_wrapper(wrapper, marks, fail_clip=1)
    text = wrapper.read_text().replace("*clip_1.mp4*)", "*clip_1.mp4*|*clip_2.mp4*)")
    wrapper.write_text(text)
    await workers.start("a", FFMPEG_PATH=str(wrapper))
    await workers.start("b", FFMPEG_PATH=str(wrapper))

    await workers.dispatch("job-few", prompts(4))
    outcome = await workers.outcome("job-few")

    clips = outcome.clips
    assert sorted(f.index for f in clips.failed) == [1, 2]
    assert len(clips.clips) == 2 < spec(STAGE).min_clips  # the orchestrator fails such a job


async def test_cancel_stops_every_clip_on_every_worker(workers: Workers, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    wrapper = write_ffmpeg_wrapper(tmp_path / "ffmpeg.sh", marks, hang=True)  # every encode hangs
    await workers.start("a", FFMPEG_PATH=str(wrapper))
    await workers.start("b", FFMPEG_PATH=str(wrapper))
    names = {workers.consumer("a"): "a", workers.consumer("b"): "b"}

    await workers.dispatch("job-cancel", prompts(CLIPS))

    async def both_rendering() -> bool:
        return len(list(marks.iterdir())) >= 2

    await workers.until(both_rendering, "the clips never started rendering")
    await workers.redis.set(workers.keys.job_cancel("job-cancel"), "1")
    outcome = await workers.outcome("job-cancel")

    assert not outcome.result.ok and outcome.result.error is not None
    assert outcome.result.error.code == ErrorCode.CANCELLED
    stream, group = workers.keys.clip_stream(), workers.keys.clip_group()

    async def all_settled() -> bool:
        return not await workers.pending(stream, group)

    await workers.until(all_settled, "clip entries still pending after the cancel")
    records = await workers.records("job-cancel")
    assert records and all(r.cancelled and not r.ok for r in records)
    assert {names[r.worker] for r in records} == {"a", "b"}  # both were rendering and both stopped
    for mark in marks.iterdir():  # every ffmpeg that started was killed
        with pytest.raises(ProcessLookupError):
            os.kill(int(mark.name), 0)
    storage = LocalStorage(workers.storage_dir, "k", "http://127.0.0.1:1")
    assert not [o for o in await storage.list("video-clips/job-cancel/") if o.key.endswith(".mp4")]


async def test_killed_workers_clips_and_coordination_are_taken_over(workers: Workers, tmp_path: Path) -> None:
    """Worker b takes the job (its coordinator) and one clip, whose encode hangs; worker a renders
    the others; b is SIGKILLed. a reclaims the job's task (a new coordinator, which reuses the
    finished clips) and b's clip, and the job's clips come out whole, each rendered once."""
    marks = tmp_path / "marks"
    wrapper = write_ffmpeg_wrapper(tmp_path / "ffmpeg.sh", marks, hang=True)
    await workers.start("b", FFMPEG_PATH=str(wrapper))
    b = workers.consumer("b")

    await workers.dispatch("job-kill", prompts(CLIPS))
    stage_stream, clip_stream = workers.keys.stage_stream(STAGE), workers.keys.clip_stream()

    async def b_holds_task_and_a_clip() -> bool:
        task = await workers.pending(stage_stream, workers.keys.stage_group(STAGE))
        clip = await workers.pending(clip_stream, workers.keys.clip_group())
        return any(p["consumer"].decode() == b for p in task) and any(p["consumer"].decode() == b for p in clip)

    await workers.until(b_holds_task_and_a_clip, "worker b never took the task and a clip")
    await workers.start("a")
    a = workers.consumer("a")

    async def a_rendered_the_rest() -> bool:
        return len([r for r in await workers.records("job-kill") if r.ok]) >= CLIPS - 1

    await workers.until(a_rendered_the_rest, "worker a did not render the other clips")
    assert workers.kill("b") == -signal.SIGKILL
    outcome = await workers.outcome("job-kill")

    assert outcome.result.ok, outcome.result.error
    clips = outcome.clips
    assert [c.index for c in clips.clips] == list(range(CLIPS)) and not clips.failed
    records = await workers.records("job-kill")
    assert all(r.ok and r.worker == a for r in records)
    assert len({r.sig for r in records}) == len(records) == CLIPS  # nothing rendered twice
    assert [r.deliveries for r in records if r.deliveries > 1]  # b's clip, reclaimed by a
    # the new coordinator reused the finished clips: no clip entry was added twice
    assert await workers.redis.xlen(clip_stream) == CLIPS
    assert outcome.result.attempts == 1
    expected = sorted(f"job-kill:{STAGE}:clip_{i}" for i in range(CLIPS))
    assert sorted(clip_costs(outcome.result.costs)) == expected
    assert not await workers.pending(clip_stream, workers.keys.clip_group())


async def test_each_clip_reserves_its_price_and_the_cap_stops_the_clips(workers: Workers, redis: Redis) -> None:
    """Every clip reserves its price in the job's ledger before its entry goes to a clip worker;
    with a cap that covers only a few, the rest are never handed out and the stage ends with
    BUDGET_EXCEEDED once the clips in flight are done: each rendered clip billed, within the cap."""
    # A clip reserves its encode's planned compute seconds (montage_contracts.pricing) at the
    # compute rate: 10 s clips at this frame size reserve about $0.0014 each, so that after the
    # clips' stills (local compute, about $0.0007 for twelve) only a few fit under the cap.
    card = pricing.PriceCard(
        width=int(WORKER_ENV["VIDEO_WIDTH"]), height=int(WORKER_ENV["VIDEO_HEIGHT"]), fps=int(WORKER_ENV["VIDEO_FPS"])
    )
    seconds = 10.0
    cap = Decimal("0.004")
    assert 2 * pricing.clip_encode_usd(card, seconds) < cap < CLIPS * pricing.clip_encode_usd(card, seconds)
    await workers.start("a")
    await workers.start("b")
    await workers.dispatch("job-cap", prompts(CLIPS, seconds), budget=str(cap))
    outcome = await workers.outcome("job-cap")

    assert not outcome.result.ok and outcome.result.error is not None
    assert outcome.result.error.code == ErrorCode.BUDGET_EXCEEDED, outcome.result.error
    clip_spent = sum(c.amount for c in outcome.result.costs if ":clip_" in c.call_id)
    assert clip_spent <= cap
    records = await workers.records("job-cap")
    assert 0 < len(records) < CLIPS  # the clips past the cap were never handed to a worker
    ledger = await BudgetLedger(redis, workers.keys).read("job-cap")
    assert ledger["reserved"] == "0" and int(ledger["limit"]) == 4000  # micro-dollars
    assert not any(f.startswith("r:") for f in ledger)  # the stage's reservations were dropped
    # The clips in flight when a reservation was refused rendered to the end, and each is billed once.
    billed = sorted(clip_costs(outcome.result.costs))
    assert billed == sorted({f"job-cap:{STAGE}:clip_{r.index}" for r in records if r.ok}), (billed, records)
    assert clip_spent > 0
