"""Stage 1, audio_parser (critical): analyse the uploaded song.

``async def process(ctx, job_id, input: AudioParserInput) -> AudioAnalysis``

Decodes the stored file with ffmpeg to mono float PCM, then measures duration, tempo, beats,
downbeats, sections, an energy curve and a mood. Meanwhile it encodes the song's AAC track for
the final video (:mod:`soundtrack`). Lyrics come from the transcription provider when
``ctx.settings.stt_url`` is set (:mod:`lyrics`: word timestamps, priced per minute), else they
stay ``None``; a transcription that fails (outage, refusal) also leaves them ``None`` after one
attempt, with a ``message`` event saying so, since lyrics are optional to the video. Undecodable audio raises :class:`~montage_contracts.errors.PipelineError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path, PurePosixPath

import msgspec
import numpy as np
import structlog
from montage_contracts.errors import GenerationError
from montage_contracts.models import AudioAnalysis, AudioParserInput, LyricLine

from montage_stages.media import beats, ffmpeg, soundtrack, spectrum, structure
from montage_stages.providers import lyrics
from montage_stages.providers.costing import ComputeMeter
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.metrics import track_stage

STAGE = "audio_parser"
SAMPLE_RATE = 22050
ENERGY_RATE = 10.0

log = structlog.get_logger()


async def process(ctx: StageContext, job_id: str, input: AudioParserInput) -> AudioAnalysis:
    async with track_stage(STAGE):
        await ctx.check_cancelled()
        meter = ComputeMeter(ctx, job_id, STAGE)
        with meter:
            local = ctx.scratch("audio") / "song"
            await ctx.storage.get_file(input.audio_key, local)
            track = asyncio.create_task(soundtrack.prepare(ctx, job_id, local))
            try:
                samples = await ffmpeg.decode_audio(local, SAMPLE_RATE, exe=ctx.settings.ffmpeg_path)
                result = await asyncio.to_thread(analyse, samples, SAMPLE_RATE)
                await track
            finally:
                track.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await track
        await meter.report()
        sung = await transcribe(ctx, job_id, local, input.audio_key, result.duration)  # a provider call
        if sung is not None:
            result = msgspec.structs.replace(result, lyrics=sung)
        log.info(
            "audio_analysed",
            job_id=job_id,
            duration=result.duration,
            tempo=result.tempo,
            beats=len(result.beat_timestamps),
            sections=len(result.sections),
            mood=result.mood.name,
        )
        return result


async def transcribe(
    ctx: StageContext, job_id: str, audio: Path, audio_key: str, seconds: float = 0.0
) -> list[LyricLine] | None:
    """The song's lyrics from the transcription provider, or ``None`` when none is configured
    (``seconds``: the song's length, what the call reserves against the job's budget)."""
    if not ctx.settings.stt_url:
        return None
    await ctx.check_cancelled()  # no provider call once the job is cancelled (the analysis took a while)
    suffix = PurePosixPath(audio_key).suffix or ".mp3"
    try:
        found = await lyrics.transcribe(ctx, job_id, audio, f"song{suffix}", planned_seconds=seconds)
    except GenerationError as exc:
        # Lyrics are optional to the video (the spec's critical part of this stage is the analysis):
        # one attempt, then the job goes on without lyric-driven scenes and the user is told.
        log.warning("lyrics_unavailable", job_id=job_id, error=str(exc))
        await ctx.progress(f"Lyrics unavailable ({exc}): the video is made without lyric-driven scenes")
        return None
    log.info("lyrics_transcribed", job_id=job_id, lines=len(found), words=sum(len(x.words) for x in found))
    return found


def analyse(x: np.ndarray, sr: int) -> AudioAnalysis:
    """The whole analysis of mono PCM ``x`` (pure numpy, CPU-bound)."""
    duration = x.size / sr
    feats = spectrum.onset_features(x, sr)
    pulse = beats.pulse_envelope(feats.onset, feats.low)
    coarse = beats.estimate_tempo(pulse, feats.rate)
    beat_frames = beats.track_beats(pulse, feats.rate, coarse)
    beat_times = beat_frames / feats.rate
    tempo = beats.tempo_from_beats(beat_times, coarse)

    chroma, chroma_rate = spectrum.chroma(x, sr)
    beat_chroma = _sync(chroma, chroma_rate, beat_times, duration)
    harmonic_change = _change(beat_chroma)
    phase = beats.downbeat_phase(beat_frames, feats.low, harmonic_change)
    downbeats = beat_times[phase::4]

    rms = spectrum.rms_curve(x, sr, ENERGY_RATE)
    energy = structure.energy_curve(rms)
    bar_times = downbeats if downbeats.size else np.zeros(0)
    bar_chroma = _sync(chroma, chroma_rate, bar_times, duration)
    bar_rms = _sync(rms[:, None], ENERGY_RATE, bar_times, duration)[:, 0]
    bar_energy = np.clip(bar_rms / (float(np.percentile(rms, 99)) or 1.0), 0, 1)
    sections = structure.sections(bar_times, duration, bar_chroma, bar_energy)

    loud_db = 20 * np.log10(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) + 1e-9)
    loudness = float(np.clip((loud_db + 40) / 30, 0, 1))
    brightness = float(np.clip((np.median(feats.centroid) - 500) / 3500, 0, 1))
    major, confidence = structure.mode_major(chroma.mean(axis=0))
    mood = structure.estimate_mood(tempo, loudness, brightness, major, confidence)
    return AudioAnalysis(
        duration=round(duration, 3),
        tempo=round(tempo, 2),
        beat_timestamps=[round(float(t), 4) for t in beat_times],
        downbeats=[round(float(t), 4) for t in downbeats],
        sections=sections,
        energy=energy,
        energy_rate=ENERGY_RATE,
        mood=mood,
        sample_rate=sr,
    )


def _sync(frames: np.ndarray, rate: float, bounds: np.ndarray, duration: float) -> np.ndarray:
    """Mean of feature ``frames`` between consecutive ``bounds`` (the last segment runs to the end)."""
    if bounds.size == 0:
        return np.zeros((0, frames.shape[1]))
    edges = np.append(bounds, duration)
    idx = np.clip((edges * rate).astype(int), 0, frames.shape[0] - 1)
    out = np.zeros((bounds.size, frames.shape[1]))
    for i in range(bounds.size):
        lo, hi = idx[i], max(idx[i] + 1, idx[i + 1])
        out[i] = frames[lo:hi].mean(axis=0)
    return out


def _unit(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-9))


def _change(beat_chroma: np.ndarray) -> np.ndarray:
    """Cosine distance between each beat's chroma and the previous beat's."""
    if beat_chroma.shape[0] == 0:
        return np.zeros(0)
    u = _unit(beat_chroma)
    sim = np.ones(u.shape[0])
    sim[1:] = (u[1:] * u[:-1]).sum(axis=1)
    return 1.0 - sim
