"""Upload validation: the multipart body streamed to a temporary file under a size limit, the
audio type decided from the bytes (MP3, WAV or FLAC that mutagen parses), the duration, the
prompt, and a safe file name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import struct
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from montage_common.idempotency import UploadFingerprint
from montage_common.media import ffmpeg_exe
from montage_contracts.api import PROMPT_MAX_SENT
from montage_contracts.errors import ValidationError
from mutagen import MutagenError
from mutagen.flac import FLAC
from mutagen.mp3 import MP3
from mutagen.wave import WAVE

from montage_orchestrator.errors import UnsupportedAudio, UploadTooLarge

CHUNK = 64 * 1024
MAX_PROMPT_FIELD = 64 * 1024
CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


@dataclass
class Upload:
    path: Path
    size: int
    filename: str  # as the client sent it
    prompt: str | None
    webhook_url: str | None = None
    fingerprint: str = ""  # of the song's bytes and the prompt field (``Idempotency-Key``)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class AudioInfo:
    kind: str  # "mp3" | "wav" | "flac"
    duration: float

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.kind]


async def _read_file_part(part: BodyPartReader, dest: Path, limit: int, fp: UploadFingerprint) -> int:
    size = 0
    with dest.open("wb") as fh:
        while chunk := await part.read_chunk(CHUNK):
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(f"File too large: the limit is {limit // (1024 * 1024)} MB")
            fh.write(chunk)
            fp.file_chunk(chunk)
    return size


async def _read_text_part(part: BodyPartReader) -> bytes:
    """A text field, at most ``MAX_PROMPT_FIELD`` bytes."""
    raw = bytes(await part.read(decode=True))
    if len(raw) > MAX_PROMPT_FIELD:
        raise ValidationError(f"{part.name} is too long")
    return raw


async def receive(request: web.Request, limit: int, tmp_dir: str | None = None) -> Upload:
    """Stream ``audio_file`` to a temporary file (refusing it as soon as it passes ``limit``)."""
    if not request.content_type.startswith("multipart/"):
        raise ValidationError("Expected multipart/form-data with audio_file and user_prompt")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError):  # e.g. no boundary parameter
        raise ValidationError("Malformed multipart body: the Content-Type needs a boundary") from None
    fd, name = tempfile.mkstemp(prefix="montage-upload-", dir=tmp_dir)
    os.close(fd)
    upload = Upload(Path(name), 0, "", None)
    fp = UploadFingerprint()
    try:
        got_file = False
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValidationError("Nested multipart is not supported")
            if part.name == "audio_file" and not got_file:
                upload.filename = part.filename or ""
                upload.size = await _read_file_part(part, upload.path, limit, fp)
                got_file = True
            elif part.name == "user_prompt":
                raw = await _read_text_part(part)
                fp.prompt(raw)
                upload.prompt = raw.decode("utf-8", errors="replace")
            elif part.name == "webhook_url":
                raw = await _read_text_part(part)
                fp.webhook_url(raw)
                upload.webhook_url = raw.decode("utf-8", errors="replace")
            else:
                await part.release()
        if not got_file or upload.size == 0:
            raise ValidationError("audio_file is required")
    except (HttpProcessingError, ValueError) as exc:
        upload.discard()
        raise ValidationError(f"Malformed multipart body: {type(exc).__name__}") from None
    except BaseException:
        upload.discard()
        raise
    upload.fingerprint = fp.hexdigest()
    return upload


_ALLOWED_CONTROLS = frozenset("\t\n\r")


def check_prompt(prompt: str | None, low: int, high: int) -> str:
    """The prompt, trimmed: ``low`` to ``high`` characters once trimmed, at most
    ``PROMPT_MAX_SENT`` as sent, no control character but tab and line breaks (as the document's
    ``UploadForm.user_prompt`` says)."""
    raw = prompt or ""
    text = raw.strip()
    if len(raw) > PROMPT_MAX_SENT:
        raise ValidationError(f"user_prompt is at most {PROMPT_MAX_SENT} characters as sent")
    if not low <= len(text) <= high:
        raise ValidationError(f"user_prompt must be {low}-{high} characters (got {len(text)})")
    if any(unicodedata.category(ch) in ("Cc", "Cs") and ch not in _ALLOWED_CONTROLS for ch in raw):
        raise ValidationError("user_prompt must not contain control characters")
    return text


def _sniff(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:3] == b"ID3":
        # an ID3v2 tag may precede FLAC too; let the parsers decide between the two
        return "id3"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        return "mp3"
    return None


def _probe(path: Path) -> AudioInfo:
    with path.open("rb") as fh:
        head = fh.read(12)
    kind = _sniff(head)
    parsers: dict[str, list[tuple[str, Any]]] = {
        "wav": [("wav", WAVE)],
        "flac": [("flac", FLAC)],
        "mp3": [("mp3", MP3)],
        "id3": [("flac", FLAC), ("mp3", MP3)],
    }
    candidates = parsers.get(kind or "", [])
    for name, cls in candidates:
        try:
            audio = cls(path)
        except (MutagenError, OSError, ValueError, EOFError, IndexError):
            continue
        length = float(getattr(audio.info, "length", 0.0) or 0.0)
        if length > 0:
            return AudioInfo(name, length)
    raise UnsupportedAudio("Unsupported audio: upload an MP3, WAV or FLAC file")


# How much audio the upload check decodes at the start and at the end of the song.
DECODE_WINDOW_SECONDS = 2.0
_DECODE_RATE = 8000  # mono s16le samples per second: cheap, enough to prove samples exist
_DECODE_MIN_SHARE = 0.8  # a window must yield at least this share of its samples


async def _decoded_bytes(path: Path, starts: list[float], seconds: float, exe: str) -> list[int]:
    """Bytes of mono 8 kHz s16le decoded from each window ``[start, start + seconds)``, all in one
    ffmpeg run (the file opened once per window, each window its own output); zeros when it fails."""
    with tempfile.TemporaryDirectory(prefix="montage-decode-") as tmp:
        outs = [Path(tmp) / f"window{i}.raw" for i in range(len(starts))]
        argv = [exe, "-hide_banner", "-nostdin", "-v", "error"]
        for start in starts:
            argv += ["-ss", f"{start:.3f}", "-t", f"{seconds:.3f}", "-i", str(path)]
        for i, out in enumerate(outs):
            argv += ["-map", f"{i}:a:0", "-ac", "1", "-ar", str(_DECODE_RATE), "-f", "s16le", str(out)]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            return [0] * len(starts)
        return [out.stat().st_size if out.exists() else 0 for out in outs]


_PCM_FORMATS = frozenset({1, 3})  # WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT: raw samples
_EXTENSIBLE = 0xFFFE
_MAX_CHUNKS = 64


def _wav_samples_seconds(path: Path) -> float | None:
    """Seconds of raw samples a PCM (or float) WAV really holds: its ``data`` chunk as far as the
    file goes, over the byte rate. None when it is not such a WAV (it is then decoded instead)."""
    size = path.stat().st_size
    byte_rate = 0
    with path.open("rb") as fh:
        head = fh.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        for _ in range(_MAX_CHUNKS):
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"fmt ":
                body = fh.read(length)
                if len(body) < 16:
                    return None
                tag, _channels, _rate, byte_rate = struct.unpack("<HHII", body[:12])
                if tag == _EXTENSIBLE and len(body) >= 26:
                    tag = int.from_bytes(body[24:26], "little")  # the SubFormat GUID's format code
                if tag not in _PCM_FORMATS or byte_rate <= 0:
                    return None
                fh.seek(length & 1, os.SEEK_CUR)
            elif cid == b"data":
                if not byte_rate:
                    return None
                return max(0, min(length, size - fh.tell())) / byte_rate
            else:
                fh.seek(length + (length & 1), os.SEEK_CUR)
    return None


async def check_decodes(path: Path, duration: float, exe: str = "", kind: str = "") -> None:
    """Decode the first and the last seconds: a header with no (or too little) audio is refused.

    The parsers trust a file's header for its duration; a 44-byte WAV header, a FLAC
    STREAMINFO with no frames or a truncated MP3 would pass them and fail only in the pipeline,
    after taking a rate-limit slot. Decoding two short windows (one ffmpeg process for both)
    proves the samples are there. A PCM WAV's samples are its bytes: there the same bound is
    checked on the ``data`` chunk's bytes present in the file, without decoding.
    """
    window = min(DECODE_WINDOW_SECONDS, duration)
    starts = sorted({0.0, max(0.0, duration - window - 0.25)})
    refused = UnsupportedAudio("The audio could not be decoded: the file holds no (or truncated) audio")
    if kind == "wav" and (held := _wav_samples_seconds(path)) is not None:  # a few header bytes
        # each window needs _DECODE_MIN_SHARE of its samples: the last one ends at starts[-1] + window
        if held < starts[-1] + window * _DECODE_MIN_SHARE:
            raise refused
        return
    need = window * _DECODE_RATE * 2 * _DECODE_MIN_SHARE
    if any(got < need for got in await _decoded_bytes(path, starts, window, exe or ffmpeg_exe())):
        raise refused


async def probe(path: Path) -> AudioInfo:
    """The type and duration from the bytes (not the client's MIME type or extension)."""
    info = await asyncio.to_thread(_probe, path)
    await check_decodes(path, info.duration, kind=info.kind)
    return info


def safe_filename(name: str, kind: str) -> str:
    """A name safe as one path segment: no directories, traversal or control characters."""
    base = re.split(r"[\\/]", name)[-1]
    base = unicodedata.normalize("NFKC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = _UNSAFE.sub("_", base).strip(" .")
    base = re.sub(r"\s+", "_", base)[:100].strip("._")
    stem, dot, ext = base.rpartition(".")
    if not (dot and ext.lower() in CONTENT_TYPES):
        stem = base
    stem = stem.strip("._") or "audio"
    return f"{stem}.{kind}"
