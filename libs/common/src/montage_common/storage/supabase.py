"""Supabase Storage backend (``STORAGE_BACKEND=supabase``) over ``storage3``'s async client.

The buckets of the spec (``audio-uploads``, ``reference-images``, ``video-clips``,
``video-outputs``) must exist. The backend owns its ``httpx.AsyncClient``; :meth:`close`
releases it. Storage API errors are translated at this boundary: a missing object is
:class:`~montage_contracts.errors.NotFound`, anything else :class:`StorageUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from montage_contracts.errors import NotFound, ServiceUnavailable
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from montage_common.storage.base import Storage, StoredObject, split_key

PAGE = 100
DELETE_BATCH = 1000
MAX_LIST_DEPTH = 16


class StorageUnavailable(ServiceUnavailable):
    """Supabase Storage refused or failed a request."""


def _translate(exc: Exception, key: str) -> Exception:
    if isinstance(exc, StorageApiError):
        if str(exc.status) == "404" or exc.code in ("not_found", "NoSuchKey"):
            return NotFound(f"object not found: {key}")
        return StorageUnavailable(f"storage error {exc.status} {exc.code}: {exc.message}"[:300])
    return StorageUnavailable(f"storage unreachable: {type(exc).__name__}"[:300])


def _timestamp(item: dict[str, Any]) -> float:
    raw = item.get("updated_at") or item.get("created_at")
    if not isinstance(raw, str):
        return 0.0
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class SupabaseStorage(Storage):
    def __init__(self, url: str, service_key: str, *, timeout: float = 30.0) -> None:
        headers = {"apikey": service_key, "Authorization": f"Bearer {service_key}"}
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        self._client = AsyncStorageClient(f"{url.rstrip('/')}/storage/v1/", headers, http_client=self._http)

    async def put_file(self, key: str, source: Path, content_type: str = "application/octet-stream") -> int:
        data = await asyncio.to_thread(source.read_bytes)
        return await self.put_bytes(key, data, content_type)

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> int:
        bucket, path = split_key(key)
        try:
            await self._client.from_(bucket).upload(path, data, {"content-type": content_type, "upsert": "true"})
        except (StorageApiError, httpx.HTTPError) as exc:
            raise _translate(exc, key) from None
        return len(data)

    async def get_file(self, key: str, dest: Path) -> Path:
        bucket, path = split_key(key)
        try:
            data = await self._client.from_(bucket).download(path)
        except (StorageApiError, httpx.HTTPError) as exc:
            raise _translate(exc, key) from None

        def write() -> Path:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            return dest

        return await asyncio.to_thread(write)

    async def delete(self, keys: list[str]) -> None:
        by_bucket: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            bucket, path = split_key(key)
            by_bucket[bucket].append(path)
        for bucket, paths in by_bucket.items():
            for i in range(0, len(paths), DELETE_BATCH):
                try:
                    await self._client.from_(bucket).remove(paths[i : i + DELETE_BATCH])
                except (StorageApiError, httpx.HTTPError) as exc:
                    raise _translate(exc, f"{bucket}/{paths[i]}") from None

    async def _list_folder(self, bucket: str, folder: str, search: str = "") -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            options: dict[str, Any] = {"limit": PAGE, "offset": offset}
            if search:
                options["search"] = search
            try:
                page = await self._client.from_(bucket).list(folder, options)  # type: ignore[arg-type]
            except (StorageApiError, httpx.HTTPError) as exc:
                raise _translate(exc, f"{bucket}/{folder}") from None
            out.extend(page)
            if len(page) < PAGE:
                return out
            offset += PAGE

    async def list(self, prefix: str) -> list[StoredObject]:
        bucket, _, rest = prefix.partition("/")
        split_key(f"{bucket}/x")  # validates the bucket
        folder, _, search = rest.rpartition("/")
        found: list[StoredObject] = []
        todo: list[tuple[str, str, int]] = [(folder, search, 0)]
        while todo:
            current, name_prefix, depth = todo.pop()
            for item in await self._list_folder(bucket, current, name_prefix):
                name = str(item.get("name", ""))
                if not name.startswith(name_prefix):
                    continue
                path = f"{current}/{name}" if current else name
                if item.get("id") is None:  # a folder
                    if depth < MAX_LIST_DEPTH:
                        todo.append((path, "", depth + 1))
                    continue
                meta = item.get("metadata") or {}
                found.append(StoredObject(f"{bucket}/{path}", int(meta.get("size", 0) or 0), _timestamp(item)))
        return sorted(found, key=lambda o: o.key)

    async def exists(self, key: str) -> bool:
        bucket, path = split_key(key)
        folder, _, name = path.rpartition("/")
        items = await self._list_folder(bucket, folder, name)
        return any(i.get("name") == name and i.get("id") is not None for i in items)

    async def signed_url(self, key: str, expires_in: int) -> str:
        bucket, path = split_key(key)
        try:
            res = await self._client.from_(bucket).create_signed_url(path, expires_in)
        except (StorageApiError, httpx.HTTPError) as exc:
            raise _translate(exc, key) from None
        url = res.get("signedURL") or res.get("signedUrl")
        if not url:
            raise StorageUnavailable(f"no signed URL for {key}")
        return str(url)

    async def close(self) -> None:
        await self._http.aclose()
