"""A fake of the Supabase Storage HTTP API (the endpoints ``storage3`` calls), in memory.

- ``POST /storage/v1/object/{bucket}/{path}`` (multipart ``file``; ``x-upsert``) → ``{"Key", "Id"}``
- ``GET /storage/v1/object/{bucket}/{path}`` → the bytes, 404 ``not_found``
- ``DELETE /storage/v1/object/{bucket}`` ``{"prefixes": [...]}`` → the deleted objects
- ``POST /storage/v1/object/list/{bucket}`` ``{prefix, limit, offset, search}`` → one folder level
  (folders have ``id: null``)
- ``POST /storage/v1/object/sign/{bucket}/{path}`` ``{"expiresIn"}`` → ``{"signedURL": "/object/sign/...?token="}``
- ``GET /storage/v1/object/sign/{bucket}/{path}?token=`` → the bytes while the token is valid
Every call except the signed GET needs ``apikey`` and ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

BUCKETS = ("audio-uploads", "reference-images", "video-clips", "video-outputs")


@dataclass
class StoredFile:
    data: bytes
    content_type: str
    updated: float
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"statusCode": str(status), "error": error, "message": message}, status=status)


class FakeSupabaseStorage:
    def __init__(self, service_key: str) -> None:
        self.key = service_key
        self.objects: dict[str, dict[str, StoredFile]] = {b: {} for b in BUCKETS}
        self.calls: list[tuple[str, str]] = []

    def _auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("apikey") != self.key or request.headers.get("Authorization") != f"Bearer {self.key}":
            return _error(403, "Unauthorized", "invalid signature")
        return None

    def _bucket(self, request: web.Request) -> dict[str, StoredFile] | None:
        return self.objects.get(request.match_info["bucket"])

    def _token(self, bucket: str, path: str, expires: int) -> str:
        mac = hmac.new(self.key.encode(), f"{bucket}/{path}:{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    async def upload(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        bucket, path = request.match_info["bucket"], request.match_info["path"]
        files = self._bucket(request)
        if files is None:
            return _error(404, "Bucket not found", "Bucket not found")
        upsert = request.headers.get("x-upsert", "false") == "true"
        if path in files and not upsert:
            return _error(409, "Duplicate", "The resource already exists")
        form = await request.post()
        part = form.get("file")
        if not isinstance(part, web.FileField):
            return _error(400, "InvalidRequest", "file is required")
        files[path] = StoredFile(part.file.read(), part.content_type, time.time())
        self.calls.append(("upload", f"{bucket}/{path}"))
        return web.json_response({"Key": f"{bucket}/{path}", "Id": files[path].id})

    async def download(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        files = self._bucket(request) or {}
        found = files.get(request.match_info["path"])
        if found is None:
            return _error(404, "not_found", "Object not found")
        return web.Response(body=found.data, content_type=found.content_type)

    async def delete(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        files = self._bucket(request)
        if files is None:
            return _error(404, "Bucket not found", "Bucket not found")
        body = await request.json()
        gone = []
        for path in body.get("prefixes", []):
            if files.pop(path, None) is not None:
                gone.append({"name": path, "bucket_id": request.match_info["bucket"]})
        self.calls.append(("delete", ",".join(body.get("prefixes", []))))
        return web.json_response(gone)

    async def list(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        files = self._bucket(request)
        if files is None:
            return _error(404, "Bucket not found", "Bucket not found")
        body = await request.json()
        folder = str(body.get("prefix", "")).strip("/")
        search = str(body.get("search", ""))
        limit, offset = int(body.get("limit", 100)), int(body.get("offset", 0))
        base = f"{folder}/" if folder else ""
        entries: dict[str, dict[str, object]] = {}
        for path, f in files.items():
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            name, sep, _ = rest.partition("/")
            if not name.startswith(search):
                continue
            if sep:
                entries.setdefault(name, {"name": name, "id": None, "updated_at": None, "metadata": None})
            else:
                stamp = datetime.fromtimestamp(f.updated, UTC).isoformat().replace("+00:00", "Z")
                entries[name] = {
                    "name": name,
                    "id": f.id,
                    "updated_at": stamp,
                    "created_at": stamp,
                    "metadata": {"size": len(f.data), "mimetype": f.content_type},
                }
        ordered = [entries[k] for k in sorted(entries)]
        return web.json_response(ordered[offset : offset + limit])

    async def sign(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        bucket, path = request.match_info["bucket"], request.match_info["path"]
        if path not in (self._bucket(request) or {}):
            return _error(404, "not_found", "Object not found")
        body = await request.json()
        expires = int(time.time()) + int(body["expiresIn"])
        token = self._token(bucket, path, expires)
        return web.json_response({"signedURL": f"/object/sign/{bucket}/{quote(path)}?token={token}"})

    async def signed_get(self, request: web.Request) -> web.StreamResponse:
        bucket, path = request.match_info["bucket"], request.match_info["path"]
        token = request.query.get("token", "")
        expires_raw, _, _ = token.partition(".")
        if not expires_raw.isdigit() or not hmac.compare_digest(token, self._token(bucket, path, int(expires_raw))):
            return _error(400, "InvalidJWT", "invalid signature")
        if int(expires_raw) < time.time():
            return _error(400, "InvalidJWT", "jwt expired")
        found = (self._bucket(request) or {}).get(path)
        if found is None:
            return _error(404, "not_found", "Object not found")
        return web.Response(body=found.data, content_type=found.content_type)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        p = "/storage/v1/object"
        app.router.add_post(p + "/list/{bucket}", self.list)
        app.router.add_post(p + "/sign/{bucket}/{path:.+}", self.sign)
        app.router.add_get(p + "/sign/{bucket}/{path:.+}", self.signed_get)
        app.router.add_post(p + "/{bucket}/{path:.+}", self.upload)
        app.router.add_get(p + "/{bucket}/{path:.+}", self.download)
        app.router.add_delete(p + "/{bucket}", self.delete)
        return app
