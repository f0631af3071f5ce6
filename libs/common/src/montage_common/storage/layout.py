"""Every storage key of a job, built in one place (the buckets of the spec and their layout).

A key is ``"<bucket>/<path>"``; per-job objects live under ``<bucket>/<job_id>/`` (the song under
``audio-uploads/<user_id>/<job_id>/``), so a job's files are deleted by prefix.
"""

from __future__ import annotations

AUDIO_UPLOADS = "audio-uploads"
REFERENCE_IMAGES = "reference-images"
VIDEO_CLIPS = "video-clips"
VIDEO_OUTPUTS = "video-outputs"
BUCKETS: tuple[str, ...] = (AUDIO_UPLOADS, REFERENCE_IMAGES, VIDEO_CLIPS, VIDEO_OUTPUTS)
# What a job needs only while it runs (deleted when it completes or is cancelled).
INTERMEDIATE_BUCKETS: tuple[str, ...] = (REFERENCE_IMAGES, VIDEO_CLIPS)


def audio_upload(user_id: str, job_id: str, filename: str) -> str:
    return f"{AUDIO_UPLOADS}/{user_id}/{job_id}/{filename}"


def reference_image(job_id: str, kind: str, ref_id: str) -> str:
    return f"{REFERENCE_IMAGES}/{job_id}/{kind}_{ref_id}.png"


def clip(job_id: str, index: int) -> str:
    return f"{VIDEO_CLIPS}/{job_id}/clip_{index}.mp4"


def clip_work_file(job_id: str, name: str) -> str:
    """A file the video stages share beside the clips (the soundtrack, the clip layout)."""
    return f"{VIDEO_CLIPS}/{job_id}/{name}"


def final_video(job_id: str) -> str:
    return f"{VIDEO_OUTPUTS}/{job_id}/final_video.mp4"


def poster(job_id: str) -> str:
    """A frame of the final video, beside it (kept as long as the video)."""
    return f"{VIDEO_OUTPUTS}/{job_id}/poster.jpg"


def preview(job_id: str, kind: str, index: int, subject: str | None = None) -> str:
    """A copy of a reference still or a clip, beside the final video: the intermediates are deleted
    when the job completes (spec), the previews are kept as long as the video."""
    if kind == "clip":
        return f"{VIDEO_OUTPUTS}/{job_id}/previews/clip_{index}.mp4"
    return f"{VIDEO_OUTPUTS}/{job_id}/previews/{subject or 'scene'}_{index}.png"


def preview_prefix(job_id: str) -> str:
    return f"{VIDEO_OUTPUTS}/{job_id}/previews/"


def intermediate_prefixes(job_id: str) -> list[str]:
    return [f"{bucket}/{job_id}/" for bucket in INTERMEDIATE_BUCKETS]


def job_prefixes(job_id: str, user_id: str) -> list[str]:
    """Every prefix holding one of the job's objects."""
    return [f"{AUDIO_UPLOADS}/{user_id}/{job_id}/", *intermediate_prefixes(job_id), f"{VIDEO_OUTPUTS}/{job_id}/"]


def rebase_key(key: str, job_id: str, user_id: str, new_job_id: str) -> str | None:
    """Where one of ``job_id``'s objects lives when copied to ``new_job_id`` of the same user (a retry
    reuses its stages' files as its own copies); None when ``key`` is not one of ``job_id``'s objects."""
    for old, new in zip(job_prefixes(job_id, user_id), job_prefixes(new_job_id, user_id), strict=True):
        if key.startswith(old) and len(key) > len(old):
            return new + key[len(old) :]
    return None
