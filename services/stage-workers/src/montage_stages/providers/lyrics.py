"""The lyrics seam: the OpenAI audio-transcriptions protocol (``/audio/transcriptions``).

One request per song, ``response_format=verbose_json`` with ``timestamp_granularities`` word and
segment (Whisper and Whisper-compatible servers: OpenAI's ``whisper-1``, faster-whisper-server,
LocalAI, …). Each segment becomes a :class:`~montage_contracts.models.LyricLine` carrying its words'
timestamps; the scene planner puts the words sung in a clip into its description. Priced by
the audio's minutes (the answer's ``usage.seconds``, else its ``duration``) times ``STT_PRICES``.
Failures propagate as :class:`~montage_contracts.errors.GenerationError`; audio_parser catches
them and goes on without lyrics (one attempt: the stage is not retried for lyrics alone).
"""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path
from typing import Any

import openai
from montage_contracts.messages import call_id, request_call_id
from montage_contracts.models import CostItem, LyricLine, LyricWord

from montage_stages.providers.costing import stt_usd
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import ProviderUnavailable, client_request_id, failed, request_id_of

PROVIDER = "openai-transcriptions"  # its name in the shared limits and readiness (provider_check.stage_provider)
WHAT = "transcription provider"
_LINE_GAP_SECONDS = 1.0  # without segments, a pause this long starts a new line
_LINE_WORDS = 12


async def transcribe(
    ctx: StageContext, job_id: str, audio: Path, filename: str, *, planned_seconds: float = 0.0
) -> list[LyricLine]:
    """The song's lyrics, line by line with word timestamps (``filename`` names the format);
    ``planned_seconds`` (the song's length) is what the call reserves against the job's budget."""
    s = ctx.settings
    client = ctx.providers.openai(s.stt_url, s.stt_api_key, s.stt_timeout_seconds)
    data = await asyncio.to_thread(audio.read_bytes)
    mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    call = call_id(job_id, "audio_parser", "lyrics")
    async with ctx.budget.reserved(call, stt_usd(s, s.stt_model, planned_seconds)):
        sent = client_request_id()
        try:
            await ctx.providers.limits.before_call(PROVIDER)  # a 429 any worker got: wait it out
            result = await client.audio.transcriptions.create(
                extra_headers={"X-Client-Request-Id": sent},
                file=(filename, data, mime),
                model=s.stt_model,
                response_format="verbose_json",
                timestamp_granularities=["word", "segment"],
            )
        except (openai.OpenAIError, ValueError) as exc:
            raise await failed(ctx.providers.limits, PROVIDER, WHAT, exc) from None
        await ctx.providers.limits.report(PROVIDER, True)
        raw: dict[str, Any] = result.model_dump() if hasattr(result, "model_dump") else {}
        if not isinstance(raw.get("duration"), int | float):
            raise ProviderUnavailable(f"{WHAT} answered without verbose_json's duration")
        usage = raw.get("usage") or {}
        seconds = float(usage.get("seconds") or raw["duration"]) if isinstance(usage, dict) else float(raw["duration"])
        billed = request_call_id(call, request_id_of(result, sent))  # one row per billed request
        await ctx.cost(CostItem(call_id=billed, api_name=f"stt:{s.stt_model}", amount=stt_usd(s, s.stt_model, seconds)))
    parsed = [_word(w) for w in raw.get("words") or [] if isinstance(w, dict)]
    words = [w for w in parsed if w is not None]
    return lines(words, [seg for seg in raw.get("segments") or [] if isinstance(seg, dict)])


def _word(w: dict[str, Any]) -> LyricWord | None:
    try:
        return LyricWord(start=round(float(w["start"]), 3), end=round(float(w["end"]), 3), word=str(w["word"]).strip())
    except (KeyError, TypeError, ValueError):
        return None


def lines(words: list[LyricWord], segments: list[dict[str, Any]]) -> list[LyricLine]:
    """Segments as lines with the words that start inside them; without segments, words grouped by pauses."""
    out: list[LyricLine] = []
    if segments:
        for seg in segments:
            try:
                start, end, text = float(seg["start"]), float(seg["end"]), str(seg["text"]).strip()
            except (KeyError, TypeError, ValueError):
                continue
            inside = [w for w in words if start <= w.start < end]
            if text or inside:
                out.append(LyricLine(start=round(start, 3), end=round(end, 3), text=text, words=inside))
        return out
    group: list[LyricWord] = []
    for w in words:
        if group and (w.start - group[-1].end > _LINE_GAP_SECONDS or len(group) >= _LINE_WORDS):
            out.append(_line(group))
            group = []
        group.append(w)
    if group:
        out.append(_line(group))
    return out


def _line(group: list[LyricWord]) -> LyricLine:
    return LyricLine(start=group[0].start, end=group[-1].end, text=" ".join(w.word for w in group), words=group)
