"""Errors of the orchestrator (the HTTP ones come from ``montage_contracts.errors``)."""

from __future__ import annotations

from montage_contracts.errors import PayloadTooLarge, ValidationError


class UploadTooLarge(PayloadTooLarge):
    """The uploaded file is over ``MAX_UPLOAD_BYTES``: 413, as the gateway answers a body over
    ``MAX_BODY_BYTES`` (the spec's 400 would make one cause answer two statuses by size)."""


class UnsupportedAudio(ValidationError):
    """The uploaded bytes are not MP3, WAV or FLAC."""


class JobNotCancellable(ValidationError):
    """The job already completed or failed."""
