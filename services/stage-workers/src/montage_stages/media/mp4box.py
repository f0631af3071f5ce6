"""Just enough of the MP4 (ISO BMFF) box structure to check what ffmpeg wrote, without ffprobe.

:func:`top_level` lists the top-level boxes (``moov`` before ``mdat`` means fast start);
:func:`video_track` reads the first video track's H.264 configuration (``avcC``), size and time
scale, which must be identical in every clip the composer joins without re-encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}
_SAMPLE_ENTRY_HEADER = 78  # fields of a VisualSampleEntry before its child boxes


class Mp4Error(ValueError):
    """The file is not an MP4 with the expected boxes."""


@dataclass(frozen=True, slots=True)
class VideoTrack:
    codec: str  # sample entry type, e.g. "avc1"
    width: int
    height: int
    timescale: int
    avcc: bytes  # the AVCDecoderConfigurationRecord (profile, level, SPS, PPS)

    @property
    def profile(self) -> str:
        if len(self.avcc) < 2:
            return ""
        return {66: "Baseline", 77: "Main", 88: "Extended", 100: "High"}.get(self.avcc[1], str(self.avcc[1]))


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in ``data[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise Mp4Error(f"truncated {kind!r} box")
        yield kind, pos + header, pos + size
        pos += size


def top_level(path: Path) -> list[str]:
    """The names of the file's top-level boxes, in order (reads only their headers)."""
    names: list[str] = []
    with path.open("rb") as f:
        size_total = path.stat().st_size
        pos = 0
        while pos + 8 <= size_total:
            f.seek(pos)
            head = f.read(16)
            size, kind = struct.unpack_from(">I4s", head)
            if size == 1:
                (size,) = struct.unpack_from(">Q", head, 8)
            elif size == 0:
                size = size_total - pos
            if size < 8:
                raise Mp4Error(f"bad box size at {pos}")
            names.append(kind.decode("latin-1"))
            pos += size
    return names


def video_track(path: Path) -> VideoTrack:
    """The first video track's codec configuration (raises :class:`Mp4Error` when there is none)."""
    data = _moov(path)
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind != b"trak":
            continue
        track = _video_track(data, start, end)
        if track is not None:
            return track
    raise Mp4Error(f"{path.name} has no video track")


def _moov(path: Path) -> bytes:
    with path.open("rb") as f:
        size_total = path.stat().st_size
        pos = 0
        while pos + 8 <= size_total:
            f.seek(pos)
            head = f.read(16)
            size, kind = struct.unpack_from(">I4s", head)
            header = 8
            if size == 1:
                (size,) = struct.unpack_from(">Q", head, 8)
                header = 16
            elif size == 0:
                size = size_total - pos
            if size < header:
                break
            if kind == b"moov":
                f.seek(pos + header)
                return f.read(size - header)
            pos += size
    raise Mp4Error(f"{path.name} has no moov box")


def _find(data: bytes, start: int, end: int, path: list[bytes]) -> tuple[int, int] | None:
    for kind, s, e in _boxes(data, start, end):
        if kind == path[0]:
            return (s, e) if len(path) == 1 else _find(data, s, e, path[1:])
    return None


def _video_track(data: bytes, start: int, end: int) -> VideoTrack | None:
    hdlr = _find(data, start, end, [b"mdia", b"hdlr"])
    if hdlr is None or data[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
        return None
    mdhd = _find(data, start, end, [b"mdia", b"mdhd"])
    stsd = _find(data, start, end, [b"mdia", b"minf", b"stbl", b"stsd"])
    if mdhd is None or stsd is None:
        raise Mp4Error("video track without mdhd or stsd")
    version = data[mdhd[0]]
    (timescale,) = struct.unpack_from(">I", data, mdhd[0] + (20 if version == 1 else 12))
    for kind, s, e in _boxes(data, stsd[0] + 8, stsd[1]):  # skip version, flags, entry count
        width, height = struct.unpack_from(">HH", data, s + 24)
        avcc = _find(data, s + _SAMPLE_ENTRY_HEADER, e, [b"avcC"]) if kind in (b"avc1", b"avc3") else None
        config = data[avcc[0] : avcc[1]] if avcc is not None else b""
        return VideoTrack(kind.decode("latin-1"), width, height, timescale, config)
    raise Mp4Error("video track without a sample entry")
