"""The request guard: what a request must be before a handler sees it.

- Paths with dot segments, backslashes, encoded slashes, control characters or invalid
  percent-encoding (raw, encoded or double-encoded) are refused with 400 before any handler runs,
  so no hop can resolve them into another route (:func:`unsafe_path`).
- Internal calls carry ``X-Montage-Internal`` (a shared secret) and ``X-Montage-User-Id``
  (:func:`internal_only`, :func:`internal_user`).
- Query parameters are parsed once, the same way everywhere: 400 ``VALIDATION_ERROR`` for a
  value a handler cannot use (:func:`query_int`, :func:`query_text`).
"""

from __future__ import annotations

import hmac
import unicodedata
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.typedefs import Middleware
from montage_contracts.errors import Unauthorized, ValidationError

from montage_common.web.context import HEADER_INTERNAL, HEADER_USER, Handler


def unsafe_path(raw_path: str) -> str | None:
    """Why a raw request path must be refused, or ``None`` when it is safe to route.

    Each segment is percent-decoded up to three times (double and triple encoding) and must not
    become ``.`` or ``..`` (also after Unicode compatibility folding), contain a slash, a
    backslash or a control character, or be invalid UTF-8 (overlong forms such as ``%c0%ae``).
    """
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    for segment in path.split("/"):
        text = segment
        for _ in range(3):
            try:
                decoded = unquote_to_bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                return "invalid percent-encoding in the path"
            if unicodedata.normalize("NFKC", decoded) in (".", ".."):
                return "dot segments are not allowed in the path"
            if "\\" in decoded:
                return "backslashes are not allowed in the path"
            if "/" in decoded:  # the raw segment has none: it was encoded
                return "encoded slashes are not allowed in the path"
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in decoded):
                return "control characters are not allowed in the path"
            if decoded == text:
                break
            text = decoded
    return None


@web.middleware
async def path_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse paths that another hop could resolve differently (see :func:`unsafe_path`)."""
    if (reason := unsafe_path(request.raw_path)) is not None:
        raise ValidationError(f"Invalid path: {reason}")
    return await handler(request)


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``; 400 ``VALIDATION_ERROR`` otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low} and {high}")
    return value


def query_text(request: web.Request, name: str, max_length: int) -> str:
    """A free-text query parameter, stripped of spaces (``""`` when absent): 400
    ``VALIDATION_ERROR`` when it is longer than ``max_length`` or holds a control character,
    which Postgres text cannot store (NUL) and no search needs. Checked as sent, as the document
    describes it (:data:`montage_contracts.api.SearchText`)."""
    value = request.query.get(name, "")
    if len(value) > max_length:
        raise ValidationError(f"{name} is at most {max_length} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValidationError(f"{name} must not contain control characters")
    return value.strip()


def internal_user(request: web.Request, secret: str) -> str:
    """The user id the gateway vouched for; refuses identity headers not from the gateway."""
    check_internal(request, secret)
    user = request.headers.get(HEADER_USER, "")
    if not user:
        raise Unauthorized("Missing user identity")
    return user


def check_internal(request: web.Request, secret: str) -> None:
    """Refuse a request that does not carry the gateway's internal credential."""
    given = request.headers.get(HEADER_INTERNAL, "")
    if not given or not hmac.compare_digest(given.encode(), secret.encode()):
        raise Unauthorized("Missing or invalid internal credentials")


def internal_only(secret: str) -> Middleware:
    """A middleware for internal services: every route needs the gateway's credential.

    The network is not trusted alone: a request that reached an internal service some other way
    (a misrouted ingress, a compromised pod) is refused before any handler runs. Unknown routes
    still answer 404/405 so the credential's presence is not revealed by probing.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is None:
            check_internal(request, secret)
        return await handler(request)

    return middleware
