"""Errors of the orchestrator (the HTTP ones come from ``montage_contracts.errors``)."""

from __future__ import annotations

from montage_contracts.errors import ValidationError


class UploadTooLarge(ValidationError):
    """The uploaded file is over the size limit (the spec answers 400)."""


class UnsupportedAudio(ValidationError):
    """The uploaded bytes are not MP3, WAV or FLAC."""


class JobNotCancellable(ValidationError):
    """The job already completed or failed."""
