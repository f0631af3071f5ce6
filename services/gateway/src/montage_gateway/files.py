"""``GET /files/<bucket>/<path>?expires=&sig=``: local-storage signed URLs (``montage_common.storage``).

A malformed ``sig`` or ``expires`` is a 400; a wrong or expired signature a 403; the file is streamed, with single
HTTP ranges supported (video players seek with them).
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
from pathlib import Path

from aiohttp import web
from montage_common.storage import LocalFiles
from montage_contracts.errors import Forbidden, MontageError, NotFound, ValidationError

_HEX = re.compile(r"[0-9a-f]{16,128}")


class FilesHandler:
    def __init__(self, files: LocalFiles) -> None:
        self.files = files

    async def get(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        expires = request.query.get("expires", "")
        sig = request.query.get("sig", "")
        if not (_HEX.fullmatch(sig) and expires.isascii() and expires.isdigit()):
            raise ValidationError("A signed URL needs expires (seconds) and sig (hex)")
        if not self.files.verify(key, expires, sig):
            raise Forbidden("Invalid or expired signature")
        try:
            path: Path = self.files.path_of(key)
        except MontageError:
            raise NotFound("No such file") from None
        if not await asyncio.to_thread(path.is_file):
            raise NotFound("No such file")
        # FileResponse streams with sendfile and answers Range / If-Range / HEAD itself.
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": "private, max-age=300"})
