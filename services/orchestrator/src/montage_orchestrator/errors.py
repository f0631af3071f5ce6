"""Errors of the orchestrator (the HTTP ones come from ``montage_contracts.errors``)."""

from __future__ import annotations

from montage_contracts.errors import PayloadTooLarge, ValidationError


class UploadTooLarge(PayloadTooLarge):
    """The uploaded file is over ``MAX_UPLOAD_BYTES``: 413, as the gateway answers a body over
    ``MAX_BODY_BYTES`` (the spec's 400 would make one cause answer two statuses by size)."""


class UnsupportedAudio(ValidationError):
    """The uploaded bytes are not MP3, WAV or FLAC."""


class JobWrongState(ValidationError):
    """The owner asked for an action the job's state does not allow. The spec answers a cancel of a
    final job with 400; a retry of a job that is not failed answers the same, so a client handles
    the owner's job actions one way."""


class JobNotCancellable(JobWrongState):
    """The job already completed or failed."""


class JobNotRetryable(JobWrongState):
    """The job is not failed (nor cancelled), or was retried already."""
