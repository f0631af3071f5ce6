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


@pytest.mark.parametrize("kind", ["", "wav"])  # decoded with ffmpeg / a PCM WAV's bytes counted
@pytest.mark.parametrize("holding", [0.0, 1.0, 2.5, 3.3])
async def test_missing_audio_is_refused(tmp_path: Path, holding: float, kind: str) -> None:
    """Nothing, only the first window, or the first window and part of the last: refused."""
    path = tmp_path / "song.wav"
    path.write_bytes(_claiming(4.0, holding))
    with pytest.raises(UnsupportedAudio):
        await upload.check_decodes(path, 4.0, kind=kind)


@pytest.mark.parametrize("kind", ["", "wav"])
@pytest.mark.parametrize("holding", [3.5, 4.0])
async def test_the_last_window_mostly_there_passes(tmp_path: Path, holding: float, kind: str) -> None:
    """The last window is [1.75, 3.75] s: 80 % of it (to 3.35 s) is enough, either way."""
    path = tmp_path / "song.wav"
    path.write_bytes(_claiming(4.0, holding))
    await upload.check_decodes(path, 4.0, kind=kind)


@pytest.mark.parametrize(
    ("codec", "seconds"), [("pcm_s16le", 3.0), ("pcm_f32le", 3.0), ("pcm_s24le", 3.0), ("adpcm_ms", None)]
)
def test_wav_samples_are_counted_only_for_raw_samples(tmp_path: Path, codec: str, seconds: float | None) -> None:
    import subprocess

    import imageio_ffmpeg

    src, out = tmp_path / "src.wav", tmp_path / "out.wav"
    src.write_bytes(wav_bytes(3.0))
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), "-c:a", codec, str(out)],
        check=True,
    )
    held = upload._wav_samples_seconds(out)
    assert held == (None if seconds is None else pytest.approx(seconds, abs=0.01))
    assert upload._wav_samples_seconds(tmp_path / "src.wav") == pytest.approx(3.0)
    (tmp_path / "x.mp3").write_bytes(encoded_audio(tmp_path, "mp3", 1.0))
    assert upload._wav_samples_seconds(tmp_path / "x.mp3") is None


async def test_probe_refuses_a_truncated_wav(tmp_path: Path) -> None:
    """The parser believes the header's 6 s; only the decode check sees the last seconds missing."""
    path = tmp_path / "song.wav"
    path.write_bytes(_claiming(6.0, 3.0))
    with pytest.raises(UnsupportedAudio):
        await upload.probe(path)
