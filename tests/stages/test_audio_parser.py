from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from montage_common.storage import LocalStorage
from montage_contracts.errors import PipelineError
from montage_contracts.models import AudioParserInput
from montage_stages.media import synth
from montage_stages.runtime.context import StageContext
from montage_stages.stages import audio_parser

CLICK_OFFSET = 0.5
LEAD_IN = 2.0


@pytest.mark.parametrize("bpm", [90.0, 120.0, 150.0])
async def test_click_track_tempo_and_beats(
    bpm: float, tmp_path: Path, storage: LocalStorage, make_ctx: Callable[..., StageContext]
) -> None:
    path = synth.write_wav(tmp_path / "click.wav", synth.click_track(30.0, bpm, offset=CLICK_OFFSET))
    await storage.put_file("audio-uploads/job1/click.wav", path)

    analysis = await audio_parser.process(
        make_ctx(), "job1", AudioParserInput(audio_key="audio-uploads/job1/click.wav")
    )

    assert abs(analysis.tempo - bpm) / bpm < 0.02
    assert analysis.duration == pytest.approx(30.0, abs=0.05)
    detected = np.array(analysis.beat_timestamps)
    period = 60.0 / bpm
    truth = CLICK_OFFSET + period * np.arange(int((30.0 - CLICK_OFFSET) / period) + 1)
    truth = truth[(truth >= LEAD_IN) & (truth <= 30.0 - 0.5)]
    errors = np.array([np.min(np.abs(detected - t)) for t in truth])
    assert errors.max() < 0.05, errors.max()


@pytest.mark.parametrize("bpm", [100.0, 124.0, 140.0])
async def test_drum_song_tempo(bpm: float) -> None:
    """Hi-hats on eighth notes must not pull the tempo to 2/3 or 3/2 of the beat."""
    samples = synth.song(40.0, bpm)[::2].copy()  # 44.1 kHz → 22.05 kHz

    analysis = audio_parser.analyse(samples, 22050)

    assert abs(analysis.tempo - bpm) / bpm < 0.02
    period = 60.0 / bpm
    phase = [(t / period) % 1.0 for t in analysis.beat_timestamps if t > 2.0]
    assert all(min(p, 1 - p) * period < 0.05 for p in phase)  # on the synth's beat grid


async def test_song_structure(
    song_files: dict[str, Path], storage: LocalStorage, make_ctx: Callable[..., StageContext]
) -> None:
    await storage.put_file("audio-uploads/job1/song.flac", song_files["flac"])

    a = await audio_parser.process(make_ctx(), "job1", AudioParserInput(audio_key="audio-uploads/job1/song.flac"))

    assert abs(a.tempo - 120.0) < 2.4
    bar = 4 * 60.0 / 120.0
    # the synth starts every bar on a multiple of two seconds: downbeats must fall there
    assert all(abs(d / bar - round(d / bar)) * bar < 0.05 for d in a.downbeats)
    assert a.sections[0].start == 0.0 and a.sections[-1].end == pytest.approx(a.duration)
    assert all(s.label in {"intro", "verse", "chorus", "bridge", "outro"} for s in a.sections)
    assert len(a.energy) == pytest.approx(a.duration * a.energy_rate, abs=2)
    assert min(a.energy) >= 0.0 and max(a.energy) <= 1.0
    assert a.mood.name and 0.0 <= a.mood.valence <= 1.0
    assert a.lyrics is None


async def test_undecodable_audio_is_a_pipeline_error(
    storage: LocalStorage, make_ctx: Callable[..., StageContext], recorder: object
) -> None:
    await storage.put_bytes("audio-uploads/job1/bad.mp3", b"this is not audio at all" * 100)

    with pytest.raises(PipelineError):
        await audio_parser.process(make_ctx(), "job1", AudioParserInput(audio_key="audio-uploads/job1/bad.mp3"))
