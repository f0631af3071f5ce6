"""The lyrics seam (audio transcriptions, verbose_json with word timestamps) against the OpenAI fake."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from montage_contracts.errors import GenerationError
from montage_contracts.models import AudioParserInput
from montage_stages.media import synth
from montage_stages.providers import lyrics
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import ContentRefused, ProviderUnavailable
from montage_stages.stages import audio_parser

from tests.providers.conftest import Costs, Fake

SECONDS = 12.0


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import asyncio

    path = tmp_path_factory.mktemp("song") / "song.mp3"
    return asyncio.run(synth.write_audio(path, synth.song(SECONDS, 120.0)))


async def test_request_shape_words_and_cost(
    make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs, song: Path
) -> None:
    ctx = make_ctx(stt_model="whisper-1")
    lines = await lyrics.transcribe(ctx, "job1", song, "song.mp3")
    [req] = fake.requests("transcriptions")
    assert req["path"] == "/v1/audio/transcriptions" and req["authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "whisper-1" and body["response_format"] == "verbose_json"
    assert sorted(body["timestamp_granularities[]"]) == ["segment", "word"]
    assert body["file"]["filename"] == "song.mp3" and body["file"]["content_type"] == "audio/mpeg"
    assert body["file"]["bytes"] == song.stat().st_size
    # lines are the segments, each with the words that start inside it
    assert lines and all(line.words for line in lines)
    assert sum(len(line.words) for line in lines) == req["words"]
    assert all(line.start <= w.start < line.end + 1e-6 for line in lines for w in line.words)
    assert lines[0].words[0].word == "neon" and lines[0].words[0].start == 1.0
    # priced per minute of the reported usage: whisper-1 $0.006/min
    seconds = req["usage"]["seconds"]
    assert [(c.call_id.split("@")[0], c.api_name, c.amount) for c in costs] == [
        (
            "job1:audio_parser:lyrics",
            "stt:whisper-1",
            (Decimal(seconds) / 60 * Decimal("0.006")).quantize(Decimal("0.000001")),
        )
    ]


@pytest.mark.parametrize(
    ("mode", "error", "text"),
    [
        ("429", ProviderUnavailable, "answered 429"),
        ("500", ProviderUnavailable, "answered 500"),
        ("malformed", ProviderUnavailable, "unusable body"),
        ("refuse", ContentRefused, "content policy"),
    ],
)
async def test_failures(
    make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs, song: Path, mode: str, error: type, text: str
) -> None:
    await fake.control(mode=mode, endpoints=["transcriptions"])
    with pytest.raises(GenerationError) as caught:
        await lyrics.transcribe(make_ctx(), "job1", song, "song.mp3")
    assert caught.type is error and text in caught.value.message
    assert costs == []


async def test_hang_past_the_timeout(make_ctx: Callable[..., StageContext], fake: Fake, song: Path) -> None:
    await fake.control(mode="hang", endpoints=["transcriptions"], hang_seconds=30)
    with pytest.raises(ProviderUnavailable, match="timed out"):
        await lyrics.transcribe(make_ctx(stt_timeout_seconds=0.5), "job1", song, "song.mp3")


def test_words_without_segments_are_grouped_by_pauses() -> None:
    from montage_contracts.models import LyricWord

    words = [LyricWord(start=t, end=t + 0.3, word=f"w{i}") for i, t in enumerate([0.0, 0.4, 0.8, 3.0, 3.4])]
    found = lyrics.lines(words, [])
    assert [line.text for line in found] == ["w0 w1 w2", "w3 w4"]
    assert (found[1].start, found[1].end) == pytest.approx((3.0, 3.7))


async def test_audio_parser_carries_the_lyrics(
    make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs, song: Path
) -> None:
    ctx = make_ctx()
    key = "audio-uploads/job1/song.mp3"
    await ctx.storage.put_file(key, song, "audio/mpeg")
    analysis = await audio_parser.process(ctx, "job1", AudioParserInput(audio_key=key))
    assert analysis.lyrics and analysis.lyrics[0].words[0].word == "neon"
    assert fake.requests("transcriptions")[0]["body"]["file"]["filename"] == "song.mp3"
    assert {c.call_id.split("@")[0] for c in costs} == {"job1:audio_parser:local", "job1:audio_parser:lyrics"}


@pytest.mark.parametrize("mode", ["500", "refuse"])
async def test_audio_parser_goes_on_without_lyrics_when_transcription_fails(
    make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs, song: Path, mode: str
) -> None:
    """Lyrics are optional to the video: one failed transcription leaves them out, says so, and
    the analysis (the stage's critical part) is returned."""
    import dataclasses

    await fake.control(mode=mode, endpoints=["transcriptions"])
    said: list[str] = []

    async def progress(text: str) -> None:
        said.append(text)

    ctx = dataclasses.replace(make_ctx(), progress=progress)
    key = "audio-uploads/job1/song.mp3"
    await ctx.storage.put_file(key, song, "audio/mpeg")
    analysis = await audio_parser.process(ctx, "job1", AudioParserInput(audio_key=key))
    assert analysis.lyrics is None and analysis.beat_timestamps and analysis.duration > 0
    assert len(fake.requests("transcriptions")) == 1  # one attempt, no retry of the stage for lyrics
    [note] = [t for t in said if "Lyrics unavailable" in t]
    assert "without lyric-driven scenes" in note
    assert {c.call_id for c in costs} == {"job1:audio_parser:local"}  # the failed call is not billed
