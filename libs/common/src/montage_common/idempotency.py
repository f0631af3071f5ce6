"""The fingerprint of an upload, for ``Idempotency-Key`` (IETF httpapi draft "The Idempotency-Key
HTTP Header Field"): what makes two uploads "the same request".

A multipart body is not the request's identity: a browser picks a new boundary every time it
sends a ``FormData``, so a client's retry of the very same upload differs byte for byte. The
fingerprint is taken over what the orchestrator reads from the body instead: the bytes of the
first ``audio_file`` part (as ``BodyPartReader.read_chunk`` returns them) and the decoded bytes of
the last ``user_prompt`` part (and of the last ``webhook_url`` part, when there is one), the same parts ``montage_orchestrator.upload.receive`` keeps. The
orchestrator computes it while it streams the song to disk and hands it to the gateway with its
answer (:data:`FINGERPRINT_HEADER`); the gateway computes it for a repeated key with
:func:`fingerprint_upload` and compares. One class here, so the two can never disagree.
"""

from __future__ import annotations

import hashlib

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from montage_contracts.errors import PayloadTooLarge, ValidationError

# The orchestrator's answer to an upload carries the request's fingerprint to the gateway (an
# internal header: the gateway never relays ``X-Montage-*`` headers to a client).
FINGERPRINT_HEADER = "X-Montage-Upload-Fingerprint"
_CHUNK = 64 * 1024
_MAX_PROMPT_FIELD = 64 * 1024
_VERSION = b"montage-upload-fingerprint/1\n"


class UploadFingerprint:
    """SHA-256 over the song's bytes (fed while they stream) and the prompt field's bytes."""

    def __init__(self) -> None:
        self._file = hashlib.sha256()
        self._prompt: bytes | None = None
        self._webhook: bytes | None = None

    def file_chunk(self, chunk: bytes) -> None:
        self._file.update(chunk)

    def prompt(self, raw: bytes) -> None:
        """The ``user_prompt`` field as sent (the last one wins, as in the orchestrator)."""
        self._prompt = raw

    def webhook_url(self, raw: bytes) -> None:
        """The optional ``webhook_url`` field as sent (the last one wins)."""
        self._webhook = raw

    def hexdigest(self) -> str:
        h = hashlib.sha256(_VERSION)
        h.update(self._file.digest())
        if self._prompt is None:
            h.update(b"\x00")
        else:
            h.update(b"\x01" + hashlib.sha256(self._prompt).digest())
        if self._webhook is not None:  # absent: the fingerprint of uploads before webhooks, unchanged
            h.update(b"\x02" + hashlib.sha256(self._webhook).digest())
        return h.hexdigest()


async def fingerprint_upload(request: web.Request, limit: int) -> str:
    """Read an upload's multipart body (without keeping it) and return its fingerprint.

    Raises ``ValidationError`` for a body that is not multipart or is malformed, and
    ``PayloadTooLarge`` past ``limit`` bytes of song.
    """
    if not request.content_type.startswith("multipart/"):
        raise ValidationError("Expected multipart/form-data with audio_file and user_prompt")
    fp = UploadFingerprint()
    try:
        reader = await request.multipart()
        got_file = False
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValidationError("Nested multipart is not supported")
            if part.name == "audio_file" and not got_file:
                size = 0
                while chunk := await part.read_chunk(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge("Request body too large")
                    fp.file_chunk(chunk)
                got_file = True
            elif part.name == "user_prompt":
                raw = await part.read(decode=True)
                if len(raw) > _MAX_PROMPT_FIELD:
                    raise ValidationError("user_prompt is too long")
                fp.prompt(bytes(raw))
            elif part.name == "webhook_url":
                raw = await part.read(decode=True)
                if len(raw) > _MAX_PROMPT_FIELD:
                    raise ValidationError("webhook_url is too long")
                fp.webhook_url(bytes(raw))
            else:
                await part.release()
    except (HttpProcessingError, ValueError, AssertionError, KeyError) as exc:
        raise ValidationError(f"Malformed multipart body: {type(exc).__name__}") from None
    return fp.hexdigest()
