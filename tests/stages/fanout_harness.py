"""Real video_generator worker processes on a real Redis, for the fan-out tests.

Each worker is ``python -m montage_stages --stage video_generator`` in its own session (so a
kill reaches its ffmpeg children), with the suite's low-resolution settings, sharing one local
storage directory. A job is one :class:`StageTask` added to the stage stream, as the orchestrator
adds it; its :class:`StageResult` (and progress, costs) is read back from the results stream, and
the clip records (who rendered what) from ``keys.clip_records(job_id)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from montage_contracts.keys import Keys
from montage_contracts.messages import (
    StageCost,
    StageProgress,
    StageResult,
    StageTask,
    dispatch_message_id,
    encode,
    result_decoder,
)
from montage_contracts.models import ClipPrompt, ClipPrompts, Clips, Transition, VideoGeneratorInput
from montage_stages.stages.clip_fanout import ClipRecord
from montage_streams import Emit, StreamProducer, read_range
from redis.asyncio import Redis

STAGE = "video_generator"
POLL_SECONDS = 0.2
MAX_POLLS = 1500  # every wait below gives up after this many polls (5 minutes)
ROOT = Path(__file__).resolve().parents[2]

WORKER_ENV = {
    "ENVIRONMENT": "development",
    "LOG_FORMAT": "json",
    "OPS_PORT": "0",
    "VIDEO_WIDTH": "160",
    "VIDEO_HEIGHT": "90",
    "VIDEO_FPS": "12",
    "X264_PRESET": "ultrafast",
    "CLAIM_IDLE_MS": "2000",
    "STREAM_BLOCK_MS": "500",
    "CLIP_CONCURRENCY": "1",
}


def prompts(n: int, seconds: float = 1.0) -> VideoGeneratorInput:
    """``n`` text-only clips of ``seconds`` each, a dissolve after every third clip."""
    palette = ["#203060", "#e0a040", "#40c0a0", "#101020"]
    motions = ["zoom_in", "zoom_out", "pan_left", "pan_right", "pulse"]
    clips = [
        ClipPrompt(
            index=i,
            prompt=f"shot {i}",
            start=i * seconds,
            end=(i + 1) * seconds,
            scene_id="scene_1",
            palette=palette,
            motion=motions[i % len(motions)],
            beats=[0.0, seconds / 2],
        )
        for i in range(n)
    ]
    transitions = [Transition(after_clip=i, kind="dissolve", duration=0.3) for i in range(0, n - 1, 3)]
    return VideoGeneratorInput(clip_prompts=ClipPrompts(clips=clips, text_only=True), transitions=transitions)


def write_ffmpeg_wrapper(path: Path, marks: Path, *, hang: bool = False, fail_clip: int | None = None) -> Path:
    """An ``FFMPEG_PATH`` for a worker: marks each call (a file named by its pid in ``marks``),
    then hangs (a worker stuck rendering), fails the encode of ``clip_<fail_clip>``, or runs ffmpeg."""
    marks.mkdir(parents=True, exist_ok=True)
    real = subprocess.run(
        [sys.executable, "-c", "from montage_stages.media.ffmpeg import ffmpeg_exe; print(ffmpeg_exe())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lines = ["#!/bin/sh", f'echo "$@" > "{marks}/$$"']
    if hang:
        lines.append("exec sleep 600")
    if fail_clip is not None:
        lines += [
            f'case "$*" in *clip_{fail_clip}.mp4*) echo "no encoder for this clip" >&2; exit 1;; esac',
        ]
    lines.append(f'exec "{real}" "$@"')
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


@dataclass
class JobOutcome:
    result: StageResult
    progress: list[str]
    costs: list[StageCost]

    @property
    def clips(self) -> Clips:
        return msgspec.json.decode(self.result.output, type=Clips)


@dataclass
class Workers:
    """video_generator worker processes and the Redis they share."""

    redis: Redis
    redis_url: str
    namespace: str
    storage_dir: Path
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    def consumer(self, name: str) -> str:
        """The consumer name the worker reads under (the runtime's default: host and pid)."""
        return f"{socket.gethostname()}-{self.procs[name].pid}"

    async def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        full = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MONTAGE_", "PYTEST_"))},
            **WORKER_ENV,
            "REDIS_URL": self.redis_url,
            "REDIS_NAMESPACE": self.namespace,
            "STORAGE_DIR": str(self.storage_dir),
            **env,
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "montage_stages", "--stage", STAGE],
                env=full,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        beat = self.keys.worker_heartbeat(STAGE, self.consumer(name))
        await self.until(lambda: self.redis.exists(beat), f"worker {name} never started (see {self.log_dir})")
        return proc

    def kill(self, name: str) -> int:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    async def until(self, check: Any, message: str) -> Any:
        """Poll ``check()`` (async) until it is truthy; fails after MAX_POLLS polls."""
        for _ in range(MAX_POLLS):
            value = await check()
            if value:
                return value
            dead = [n for n, p in self.procs.items() if p.poll() is not None and p.returncode != -signal.SIGKILL]
            if dead:
                raise AssertionError(f"workers exited: {dead} (see {self.log_dir})")
            await asyncio.sleep(POLL_SECONDS)
        raise AssertionError(message)

    async def dispatch(self, job_id: str, video_input: VideoGeneratorInput, *, budget: str = "50") -> None:
        task = StageTask(
            job_id=job_id, user_id="user-1", stage=STAGE, input=video_input, dispatch=1, budget_remaining=budget,
            cost_limit=budget,
        )  # fmt: skip
        emit = Emit(self.keys.stage_stream(STAGE), encode(task), message_id=dispatch_message_id(job_id, STAGE, 1))
        await StreamProducer(self.redis).emit([emit])

    async def messages(self, job_id: str) -> list[Any]:
        entries = await read_range(self.redis, self.keys.results_stream())
        return [m for m in (result_decoder.decode(e.payload) for e in entries) if m.job_id == job_id]

    async def outcome(self, job_id: str) -> JobOutcome:
        async def result() -> StageResult | None:
            return next((m for m in await self.messages(job_id) if isinstance(m, StageResult)), None)

        found = await self.until(result, f"no result for {job_id} (see {self.log_dir})")
        msgs = await self.messages(job_id)
        return JobOutcome(
            found,
            [m.text for m in msgs if isinstance(m, StageProgress)],
            [m for m in msgs if isinstance(m, StageCost)],
        )

    async def records(self, job_id: str) -> list[ClipRecord]:
        entries = await read_range(self.redis, self.keys.clip_records(job_id))
        return [msgspec.json.decode(e.payload, type=ClipRecord) for e in entries]

    async def pending(self, stream: str, group: str) -> list[dict[str, Any]]:
        r: Any = self.redis
        try:
            found: list[dict[str, Any]] = await r.xpending_range(stream, group, min="-", max="+", count=100)
        except Exception:
            return []
        return found
