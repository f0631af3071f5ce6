"""Real musical test and demo songs: drum kits on a tempo grid with chords and bass, or click tracks.

``montage-sample-song OUT --seconds 40 --bpm 120`` writes a song; the format follows the suffix
(``.wav`` natively, ``.mp3``/``.flac``/others through ffmpeg).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import wave
from pathlib import Path

import numpy as np

from montage_stages.media import ffmpeg

SAMPLE_RATE = 44100
# I–V–vi–IV in C major, then a minor-ish bridge; MIDI note numbers of each chord.
_PROGRESSION = [[60, 64, 67], [55, 59, 62], [57, 60, 64], [53, 57, 60]]
_BRIDGE = [[57, 60, 64], [52, 55, 59], [53, 57, 60], [55, 59, 62]]


def _hz(midi: float) -> float:
    return float(440.0 * 2.0 ** ((midi - 69) / 12))


def _env(n: int, decay: float, sr: int) -> np.ndarray:
    return np.asarray(np.exp(-np.arange(n) / (decay * sr)), dtype=np.float64)


def _kick(sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(0.35 * sr)
    t = np.arange(n) / sr
    freq = 50 + 90 * np.exp(-t * 30)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.asarray(np.sin(phase) * _env(n, 0.12, sr))


def _snare(sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(0.2 * sr)
    t = np.arange(n) / sr
    noise = rng.standard_normal(n) * _env(n, 0.05, sr)
    tone = np.sin(2 * np.pi * 190 * t) * _env(n, 0.04, sr)
    return np.asarray(0.5 * noise + 0.6 * tone)


def _hat(sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(0.06 * sr)
    noise = np.diff(rng.standard_normal(n + 1))
    return np.asarray(0.25 * noise * _env(n, 0.012, sr))


def _click(sr: int) -> np.ndarray:
    n = int(0.03 * sr)
    t = np.arange(n) / sr
    return np.asarray(np.sin(2 * np.pi * 1000 * t) * _env(n, 0.006, sr))


def _tone(midi: float, n: int, sr: int, bright: float) -> np.ndarray:
    t = np.arange(n) / sr
    f = _hz(midi)
    out = np.sin(2 * np.pi * f * t)
    for h in (2, 3, 4):
        out += (bright / h) * np.sin(2 * np.pi * f * h * t)
    return out


def _add(buf: np.ndarray, sound: np.ndarray, at: int, gain: float) -> None:
    if at >= buf.size:
        return
    end = min(buf.size, at + sound.size)
    buf[at:end] += gain * sound[: end - at]


def click_track(seconds: float, bpm: float, *, offset: float = 0.5, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Clicks at ``offset + k * 60 / bpm``; returns mono float PCM in -1..1."""
    buf = np.zeros(int(seconds * sr))
    click = _click(sr)
    period = 60.0 / bpm
    for k in range(int((seconds - offset) / period) + 1):
        _add(buf, click, round((offset + k * period) * sr), 0.8)
    return buf.astype(np.float32)


def song(seconds: float, bpm: float, *, seed: int = 7, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A pop-shaped song: intro, verse, chorus, verse, bridge, chorus, outro; drums, bass, chords."""
    rng = np.random.default_rng(seed)
    buf = np.zeros(int(seconds * sr))
    beat = 60.0 / bpm
    bar = 4 * beat
    n_bars = int(np.ceil(seconds / bar))
    kick, snare, hat = _kick(sr, rng), _snare(sr, rng), _hat(sr, rng)
    plan = _arrangement(n_bars)
    for b in range(n_bars):
        part = plan[b]
        t0 = b * bar
        loud = {"intro": 0.45, "verse": 0.7, "chorus": 1.0, "bridge": 0.6, "outro": 0.4}[part]
        chords = _BRIDGE if part == "bridge" else _PROGRESSION
        chord = chords[b % 4]
        n_bar = int(bar * sr)
        pad = sum(_tone(m, n_bar, sr, 0.6 if part == "chorus" else 0.25) for m in chord)
        pad_env = np.minimum(1.0, np.arange(n_bar) / (0.02 * sr)) * _env(n_bar, bar * 0.9, sr)
        _add(buf, pad * pad_env, int(t0 * sr), 0.07 * loud)
        for k in range(4):
            tb = t0 + k * beat
            at = round(tb * sr)
            n_beat = int(beat * sr)
            bass = _tone(chord[0] - 24, n_beat, sr, 0.3) * _env(n_beat, beat * 0.5, sr)
            _add(buf, bass, at, 0.25 * loud)
            if part != "intro":
                if k in (0, 2):
                    _add(buf, kick, at, (0.9 if k == 0 else 0.7) * loud)
                else:
                    _add(buf, snare, at, 0.5 * loud)
            for half in (0, 1):
                _add(buf, hat, round((tb + half * beat / 2) * sr), (0.6 if half == 0 else 0.35) * loud)
    peak = float(np.max(np.abs(buf))) or 1.0
    return (0.89 * buf / peak).astype(np.float32)


def _arrangement(n_bars: int) -> list[str]:
    """Section label of each bar, proportioned to the song's length."""
    shape = [("intro", 1), ("verse", 2), ("chorus", 2), ("verse", 2), ("bridge", 1), ("chorus", 2), ("outro", 1)]
    units = sum(u for _, u in shape)
    labels: list[str] = []
    for name, u in shape:
        labels += [name] * max(1, round(n_bars * u / units))
    labels = labels[:n_bars]
    while len(labels) < n_bars:
        labels.append("outro")
    return labels


def write_wav(path: Path, samples: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


async def write_audio(path: Path, samples: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write ``samples`` as WAV, or encode by suffix (mp3, flac, ...) through ffmpeg."""
    if path.suffix.lower() == ".wav":
        return write_wav(path, samples, sr)
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_wav(Path(tmp) / "song.wav", samples, sr)
        codec = {".mp3": ["-c:a", "libmp3lame", "-b:a", "192k"], ".flac": ["-c:a", "flac"]}
        await ffmpeg.run(["-v", "error", "-y", "-i", str(wav), *codec.get(path.suffix.lower(), []), str(path)])
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic song (drums, bass, chords).")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--bpm", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--click", action="store_true", help="a click track instead of a song")
    args = parser.parse_args(argv)
    samples = click_track(args.seconds, args.bpm) if args.click else song(args.seconds, args.bpm, seed=args.seed)
    asyncio.run(write_audio(args.out, samples))
    print(args.out)


if __name__ == "__main__":
    main()
