"""Fixtures for the orchestrator tests: the orchestrator as a real HTTP server (in-process or a
``python -m montage_orchestrator`` subprocess), and stage workers replaced by small
StreamConsumers that answer each StageTask with canned outputs or failures.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import struct
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from montage_common import events
from montage_common.settings import load
from montage_common.storage import LocalStorage
from montage_contracts.keys import Keys
from montage_contracts.messages import ErrorInfo, StageCost, StageProgress, StageResult, StageTask, encode, task_decoder
from montage_contracts.models import (
    AudioAnalysis,
    Clip,
    ClipFailure,
    ClipPrompt,
    ClipPrompts,
    Clips,
    ClipScript,
    CostItem,
    ReferenceImage,
    ReferenceImages,
    Scene,
    ScenePlan,
    Transition,
    VideoOutput,
)
from montage_contracts.pipeline import STAGES
from montage_dev.devstack import free_port
from montage_orchestrator.app import create_app
from montage_orchestrator.deps import DEPS, Deps
from montage_orchestrator.settings import OrchestratorSettings
from montage_streams import Delivery, Emit, StreamConsumer, StreamProducer
from redis.asyncio import Redis

from tests import support

SECRET = "test-internal-secret"
PROMPT = "A neon city at night, rain on the streets, a lone dancer moving to the beat of the song."
N_CLIPS = 5


def headers(user: str = "user-1", secret: str = SECRET) -> dict[str, str]:
    return support.internal_headers(user, secret)


async def wait_for(check: Callable[[], Awaitable[Any]], *, attempts: int = 400, every: float = 0.05) -> Any:
    return await support.wait_for(check, attempts=attempts, every=every)


# --- audio ------------------------------------------------------------------------------
def wav_bytes(seconds: float = 2.0, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(int(seconds * rate))
        )
        w.writeframes(frames)
    return buf.getvalue()


def encoded_audio(tmp: Path, fmt: str, seconds: float = 2.0) -> bytes:
    import imageio_ffmpeg

    src = tmp / "src.wav"
    src.write_bytes(wav_bytes(seconds))
    out = tmp / f"out.{fmt}"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), str(out)], check=True)
    return out.read_bytes()


def upload_form(
    data: bytes,
    prompt: str = PROMPT,
    filename: str = "song.wav",
    ctype: str = "audio/wav",
    webhook_url: str | None = None,
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("user_prompt", prompt)
    form.add_field("audio_file", data, filename=filename, content_type=ctype)
    if webhook_url is not None:
        form.add_field("webhook_url", webhook_url)
    return form


# --- canned stage outputs ---------------------------------------------------------------
def canned_output(stage: str, job_id: str, n_clips: int = N_CLIPS, failed: int = 0) -> msgspec.Struct:
    duration = 30.0
    step = duration / n_clips
    if stage == "audio_parser":
        return AudioAnalysis(duration=duration, tempo=120.0, beat_timestamps=[0.5 * i for i in range(1, 60)])
    if stage == "scene_planner":
        return ScenePlan(
            style="neon",
            characters=[],
            scenes=[Scene(id="s1", description="city")],
            clip_scripts=[
                ClipScript(index=i, start=i * step, end=(i + 1) * step, scene_id="s1", description="dance")
                for i in range(n_clips)
            ],
            transitions=[Transition(after_clip=i, kind="fade", duration=0.5) for i in range(n_clips - 1)],
        )
    if stage == "reference_generator":
        return ReferenceImages(
            scene_references=[ReferenceImage(id="s1", kind="scene", key=f"reference-images/{job_id}/scene_s1.png")]
        )
    if stage == "prompt_generator":
        return ClipPrompts(
            clips=[
                ClipPrompt(index=i, prompt="dance", start=i * step, end=(i + 1) * step, scene_id="s1")
                for i in range(n_clips)
            ]
        )
    if stage == "video_generator":
        ok = [i for i in range(n_clips) if i >= failed]
        return Clips(
            clips=[
                Clip(
                    index=i, key=f"video-clips/{job_id}/clip_{i}.mp4", start=i * step, end=(i + 1) * step, duration=step
                )
                for i in ok
            ],
            failed=[ClipFailure(index=i, error="provider failed") for i in range(failed)],
        )
    return VideoOutput(
        key=f"video-outputs/{job_id}/final_video.mp4", duration=duration, width=640, height=360, size_bytes=4
    )


@dataclass
class Reply:
    """How a fake stage answers: output (default canned), or an error; costs, progress texts."""

    error: ErrorInfo | None = None
    output: msgspec.Struct | None = None
    costs: list[str] = field(default_factory=lambda: ["0.10"])
    progress: list[str] = field(default_factory=list)
    failed_clips: int = 0
    hold: asyncio.Event | None = None  # wait for this before answering


Behaviour = Callable[[StageTask], Reply]


class FakeStages:
    """One StreamConsumer per stage stream, answering like a real stage worker would."""

    def __init__(self, redis: Redis, keys: Keys, storage: LocalStorage) -> None:
        self.redis, self.keys, self.storage = redis, keys, storage
        self.producer = StreamProducer(redis)
        self.behaviour: dict[str, Behaviour] = {}
        self.tasks: list[StageTask] = []
        self.consumers: list[StreamConsumer] = []
        self._runs: list[asyncio.Task[None]] = []

    def reply(self, stage: str, task: StageTask) -> Reply:
        fn = self.behaviour.get(stage)
        return fn(task) if fn else Reply(progress=[f"{stage} working"])

    async def _files(self, stage: str, output: msgspec.Struct) -> None:
        keys: list[str] = []
        if isinstance(output, ReferenceImages):
            keys = [r.key for r in output.scene_references]
        elif isinstance(output, Clips):
            keys = [c.key for c in output.clips]
        elif isinstance(output, VideoOutput):
            keys = [output.key]
        for key in keys:
            await self.storage.put_bytes(key, b"data")

    def handler(self, stage: str) -> Callable[[Delivery], Awaitable[list[Emit]]]:
        results = self.keys.results_stream()

        async def handle(d: Delivery) -> list[Emit]:
            task = task_decoder.decode(d.payload)
            self.tasks.append(task)
            reply = self.reply(stage, task)
            if reply.hold is not None:
                await reply.hold.wait()
            if await self.redis.exists(self.keys.job_cancel(task.job_id)):
                reply = Reply(error=ErrorInfo(code="CANCELLED", message="Job cancelled by user"), costs=[])
            for text in reply.progress:
                msg = StageProgress(job_id=task.job_id, stage=stage, text=text, dispatch=task.dispatch)
                await self.producer.emit([Emit(results, encode(msg))])
            items = [
                CostItem(call_id=f"{task.job_id}:{stage}:{i}", api_name="fake", amount=Decimal(c))
                for i, c in enumerate(reply.costs)
            ]
            for item in items:
                msg2 = StageCost(job_id=task.job_id, stage=stage, cost=item, dispatch=task.dispatch)
                await self.producer.emit([Emit(results, encode(msg2))])
            output = None
            if reply.error is None:
                output = reply.output or canned_output(stage, task.job_id, failed=reply.failed_clips)
                await self._files(stage, output)
            result = StageResult(
                job_id=task.job_id,
                stage=stage,
                dispatch=task.dispatch,
                ok=reply.error is None,
                output=msgspec.Raw(msgspec.json.encode(output)) if output is not None else None,
                error=reply.error,
                duration_seconds=0.01,
                costs=items,
            )
            return [Emit(results, encode(result), message_id=f"{task.job_id}:{stage}:{task.dispatch}")]

        return handle

    async def start(self) -> None:
        for stage in STAGES:
            c = StreamConsumer(
                redis=self.redis,
                stream=self.keys.stage_stream(stage),
                group=self.keys.stage_group(stage),
                handler=self.handler(stage),
                keys=self.keys,
                consumer=f"fake-{stage}",
                concurrency=4,
                block_ms=100,
                grace=0.2,
            )
            self.consumers.append(c)
            self._runs.append(asyncio.create_task(c.run()))
        for c in self.consumers:
            await c.started.wait()

    async def stop(self) -> None:
        for c in self.consumers:
            c.stop()
        await asyncio.gather(*self._runs, return_exceptions=True)


# --- the orchestrator -------------------------------------------------------------------
@dataclass
class Orchestrator:
    url: str
    deps: Deps
    session: aiohttp.ClientSession
    fakes: FakeStages
    app: web.Application
    runner: web.AppRunner | None = None

    async def stop(self) -> None:
        """Stop this orchestrator now (as a graceful shutdown does: every background loop ends)."""
        await self.fakes.stop()
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    async def upload(self, data: bytes | None = None, user: str = "user-1", **form: Any) -> aiohttp.ClientResponse:
        return await self.session.post(
            f"{self.url}/api/v1/upload-audio", data=upload_form(data or wav_bytes(), **form), headers=headers(user)
        )

    async def create_job(self, user: str = "user-1") -> str:
        resp = await self.upload(user=user)
        assert resp.status == 201, await resp.text()
        job_id: str = (await resp.json())["job_id"]
        return job_id

    async def job(self, job_id: str, user: str = "user-1") -> dict[str, Any]:
        resp = await self.session.get(f"{self.url}/api/v1/jobs/{job_id}", headers=headers(user))
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    async def wait_final(self, job_id: str) -> dict[str, Any]:
        """The job's status once final and its final event is in the log."""

        async def final() -> dict[str, Any] | None:
            body = await self.job(job_id)
            return body if body["status"] in ("completed", "failed") else None

        result: dict[str, Any] = await wait_for(final)
        await self.wait_event(job_id, "completed" if result["status"] == "completed" else "error")
        return result

    async def events(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (e.event, msgspec.to_builtins(e.data))
            for _, e in await events.replay(self.deps.redis, self.deps.keys, job_id)
        ]

    async def wait_event(self, job_id: str, name: str) -> list[tuple[str, dict[str, Any]]]:
        async def seen() -> list[tuple[str, dict[str, Any]]] | None:
            evs = await self.events(job_id)
            return evs if any(e == name for e, _ in evs) else None

        result: list[tuple[str, dict[str, Any]]] = await wait_for(seen)
        return result


def make_settings(
    redis_url: str, database_url: str, namespace: str, storage_dir: Path, **overrides: Any
) -> OrchestratorSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "database_url": database_url,
        "redis_namespace": namespace,
        "storage_dir": str(storage_dir),
        "storage_signing_key": "test-signing-key",
        "public_base_url": "http://127.0.0.1:1",
        "internal_secret": SECRET,
        "sweep_interval_seconds": 0.1,
        "outbox_grace_seconds": 2.0,
        "claim_idle_ms": 3000,
        "shutdown_grace_seconds": 1.0,
        "orphan_grace_seconds": 3600.0,
        # The session shares one database and most tests upload as "user-1", leaving jobs of earlier
        # tests processing: no per-user turns here unless a test asks (tests/orchestrator/test_turns.py).
        "user_max_active_jobs": 1000,
    }
    values.update(overrides)
    return load(OrchestratorSettings, env={}, **values)


# --- the orchestrator as its own process ---------------------------------------------------
def process_env(
    redis_url: str, database_url: str, namespace: str, storage_dir: Path, port: int, ops_port: int, **extra: str
) -> dict[str, str]:
    """The environment of ``python -m montage_orchestrator`` on ``port`` (ops on ``ops_port``): the
    test's Redis namespace and database, local storage under ``storage_dir`` with the key and secret
    of :func:`make_settings`, JSON logs, no per-user turns; ``extra`` adds variables."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "REDIS_NAMESPACE": namespace,
        "PORT": str(port),
        "OPS_PORT": str(ops_port),
        "STORAGE_DIR": str(storage_dir),
        "STORAGE_SIGNING_KEY": "test-signing-key",
        "INTERNAL_SECRET": SECRET,
        "LOG_FORMAT": "json",
        "USER_MAX_ACTIVE_JOBS": "1000",  # jobs of earlier tests (same database, same user) hold slots
        **extra,
    }


def spawn_orchestrator(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m montage_orchestrator`` with ``env``, its output appended to ``log``."""
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "montage_orchestrator"], env=env, stdout=fh, stderr=subprocess.STDOUT
        )


async def orchestrator_ready(session: aiohttp.ClientSession, ops_url: str) -> bool:
    """Whether the orchestrator process answers ``/readyz`` at ``ops_url`` with 200."""
    try:
        async with session.get(f"{ops_url}/readyz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


@pytest.fixture
async def orchestrator_factory(
    redis_url: str, database_url: str, namespace: str, keys: Keys, redis: Redis, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Orchestrator]]]:
    runners: list[web.AppRunner] = []
    fakes_all: list[FakeStages] = []
    session = aiohttp.ClientSession()
    storage_dir = tmp_path / "storage"

    async def make(workers: bool = True, **overrides: Any) -> Orchestrator:
        own = overrides.pop("database_url", database_url)  # a test may bring its own database
        settings = make_settings(redis_url, own, namespace, storage_dir, **overrides)
        app = create_app(settings)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        fakes = FakeStages(redis, keys, LocalStorage(storage_dir, "test-signing-key", "http://127.0.0.1:1"))
        if workers:
            await fakes.start()
        fakes_all.append(fakes)
        return Orchestrator(f"http://127.0.0.1:{port}", app[DEPS], session, fakes, app, runner)

    yield make
    for f in fakes_all:
        await f.stop()
    for r in runners:
        if r.server is not None:  # not stopped by its test (``Orchestrator.stop``)
            await r.cleanup()
    await session.close()


@pytest.fixture
async def orch(orchestrator_factory: Callable[..., Awaitable[Orchestrator]]) -> Orchestrator:
    return await orchestrator_factory()


@pytest.fixture
async def orch_factory_budget(orchestrator_factory: Callable[..., Awaitable[Orchestrator]]) -> Orchestrator:
    """Development mode with a $3 cap and local compute at $0.80 a second: a 2 s song is estimated at
    about $2.60, its video_generator at about $1.57."""
    return await orchestrator_factory(job_cost_limit="3", local_compute_rate_usd_per_second=0.8)
