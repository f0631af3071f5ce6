"""The final video's audio track, encoded while the song is analysed.

AAC encoding is single-threaded and takes seconds (more than the analysis of a song), so
audio_parser starts it next to its own work, on a core the analysis leaves idle, and stores the
track at ``video-clips/{job_id}/soundtrack.m4a``; the composer then copies it into the video. It
is best effort: without a stored track the composer encodes the song itself.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from montage_common.storage import layout

from montage_stages.media import ffmpeg
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.settings import StageSettings

log = structlog.get_logger()


def soundtrack_key(job_id: str) -> str:
    return layout.clip_work_file(job_id, "soundtrack.m4a")


def aac_args(s: StageSettings) -> list[str]:
    """Encoder options of the final video's audio."""
    return ["-c:a", "aac", "-aac_coder", s.aac_coder, "-b:a", s.audio_bitrate]


async def prepare(ctx: StageContext, job_id: str, song: Path) -> bool:
    """Encode ``song``'s audio as AAC and store it for the composer; False when that failed."""
    s = ctx.settings
    dest = song.with_name("soundtrack.m4a")
    args = ["-v", "error", "-y", "-i", str(song), "-map", "0:a:0", *aac_args(s), "-map_metadata", "-1"]
    try:
        await ffmpeg.run([*args, "-f", "mp4", str(dest)], exe=s.ffmpeg_path)
        await ctx.storage.put_file(soundtrack_key(job_id), dest, "audio/mp4")
    except Exception as exc:  # the composer encodes the song itself then
        log.warning("soundtrack_failed", job_id=job_id, error=f"{type(exc).__name__}: {exc}"[:300])
        return False
    return True
