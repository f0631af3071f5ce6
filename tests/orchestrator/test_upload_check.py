"""The upload's decode check (``upload.check_decodes``, one ffmpeg run for both windows): real
files pass; a header whose audio is missing at the start or at the end is refused."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from montage_orchestrator import upload
from montage_orchestrator.errors import UnsupportedAudio

from tests.orchestrator.conftest import encoded_audio, wav_bytes


def _claiming(seconds: float, holding: float, rate: int = 8000) -> bytes:
    """A WAV whose header claims ``seconds`` of audio but which holds only ``holding`` seconds."""
    real = wav_bytes(holding, rate)
    claimed = int(seconds * rate) * 2
    header = bytearray(real[:44])
    struct.pack_into("<I", header, 4, 36 + claimed)
    struct.pack_into("<I", header, 40, claimed)
    return bytes(header) + real[44:]


@pytest.mark.parametrize(("fmt", "seconds"), [("wav", 4.0), ("wav", 1.0), ("flac", 5.0), ("mp3", 5.0)])
async def test_real_audio_passes(tmp_path: Path, fmt: str, seconds: float) -> None:
    path = tmp_path / f"song.{fmt}"
    path.write_bytes(wav_bytes(seconds) if fmt == "wav" else encoded_audio(tmp_path, fmt, seconds))
    info = await upload.probe(path)
    assert info.kind == fmt and info.duration == pytest.approx(seconds, abs=0.3)


@pytest.mark.parametrize("holding", [0.0, 1.0, 2.5])
async def test_missing_audio_is_refused(tmp_path: Path, holding: float) -> None:
    """Nothing, only the first window, or the first window and part of the last: refused."""
    path = tmp_path / "song.wav"
    path.write_bytes(_claiming(4.0, holding))
    with pytest.raises(UnsupportedAudio):
        await upload.check_decodes(path, 4.0)


async def test_probe_refuses_a_truncated_wav(tmp_path: Path) -> None:
    """The parser believes the header's 6 s; only the decode check sees the last seconds missing."""
    path = tmp_path / "song.wav"
    path.write_bytes(_claiming(6.0, 3.0))
    with pytest.raises(UnsupportedAudio):
        await upload.probe(path)
