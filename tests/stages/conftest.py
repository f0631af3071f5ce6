"""Fixtures of the stage tests: local storage, low-resolution settings, contexts, synthetic songs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from montage_common.storage import LocalStorage
from montage_contracts.models import CostItem
from montage_stages.media import synth
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.settings import StageSettings

SONG_SECONDS = 30.0
SONG_BPM = 120.0


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage", "test-signing-key", "http://127.0.0.1:1")


@pytest.fixture
def settings() -> StageSettings:
    return StageSettings(video_width=160, video_height=90, video_fps=12, max_parallel_clips=3)


class Recorder:
    """Collects what a stage reports through its context callbacks."""

    def __init__(self) -> None:
        self.progress: list[str] = []
        self.costs: list[CostItem] = []

    async def on_progress(self, text: str) -> None:
        self.progress.append(text)

    async def on_cost(self, item: CostItem) -> None:
        self.costs.append(item)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_ctx(
    storage: LocalStorage, settings: StageSettings, tmp_path: Path, recorder: Recorder
) -> Callable[..., StageContext]:
    def make(job_id: str = "job1", **kwargs: object) -> StageContext:
        kwargs.setdefault("settings", settings)
        kwargs.setdefault("progress", recorder.on_progress)
        kwargs.setdefault("cost", recorder.on_cost)
        return StageContext.create(job_id, storage, workdir=tmp_path / "work" / job_id, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def song_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 30-second song with drums, bass and chords as WAV, MP3 and FLAC."""
    import asyncio

    root = tmp_path_factory.mktemp("songs")
    samples = synth.song(SONG_SECONDS, SONG_BPM)

    async def write_all() -> dict[str, Path]:
        return {ext: await synth.write_audio(root / f"song.{ext}", samples) for ext in ("wav", "mp3", "flac")}

    return asyncio.run(write_all())
