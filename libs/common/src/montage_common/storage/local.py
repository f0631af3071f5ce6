"""The local backend: a directory tree, with HMAC-signed URLs the gateway serves.

URLs are signed with HMAC-SHA256 over ``<key>\\n<expires>``; the gateway serves
``/files/<key>?expires=..&sig=..`` through :class:`LocalFiles` after :func:`verify_signature`,
so a URL cannot be forged and stops working at its expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import shutil
import time
from pathlib import Path
from urllib.parse import quote

from montage_contracts.errors import NotFound, ValidationError

from montage_common.storage.base import Storage, StoredObject, split_key
from montage_common.storage.layout import BUCKETS


def sign(secret: str, key: str, expires: int) -> str:
    msg = f"{key}\n{expires}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def verify_signature(secret: str, key: str, expires: str, sig: str, now: float | None = None) -> bool:
    """True when ``sig`` is valid for ``key`` and ``expires`` has not passed.

    Anything but ASCII digits in ``expires`` or ASCII in ``sig`` is simply invalid (never an error).
    """
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12 and sig.isascii()):
        return False
    exp = int(expires)
    if exp < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(sign(secret, key, exp).encode(), sig.encode())


class LocalStorage(Storage):
    """A directory tree ``<root>/<bucket>/<path>``; URLs served by the gateway's ``/files/``."""

    def __init__(self, root: str | Path, signing_key: str, public_base_url: str) -> None:
        self.root = Path(root).resolve()
        self.signing_key = signing_key
        self.public_base_url = public_base_url.rstrip("/")

    def path_of(self, key: str) -> Path:
        bucket, path = split_key(key)
        return self.root / bucket / path

    async def put_file(self, key: str, source: Path, content_type: str = "application/octet-stream") -> int:
        dest = self.path_of(key)

        def copy() -> int:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
            return dest.stat().st_size

        return await asyncio.to_thread(copy)

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> int:
        dest = self.path_of(key)

        def write() -> int:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
            return len(data)

        return await asyncio.to_thread(write)

    async def get_file(self, key: str, dest: Path) -> Path:
        src = self.path_of(key)

        def copy() -> Path:
            if not src.is_file():
                raise NotFound(f"object not found: {key}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            return dest

        return await asyncio.to_thread(copy)

    async def copy(self, source: str, dest: str, content_type: str = "application/octet-stream") -> int:
        """A file copy with a fresh modification time (cleanup's orphan grace counts from it)."""
        src = self.path_of(source)
        if not await asyncio.to_thread(src.is_file):
            raise NotFound(f"object not found: {source}")
        return await self.put_file(dest, src, content_type)

    async def delete(self, keys: list[str]) -> None:
        def remove() -> None:
            for key in keys:
                p = self.path_of(key)
                p.unlink(missing_ok=True)
                # prune empty parent directories up to the bucket
                bucket_dir = self.root / split_key(key)[0]
                parent = p.parent
                while parent != bucket_dir and parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
                    parent = parent.parent

        await asyncio.to_thread(remove)

    async def list(self, prefix: str) -> list[StoredObject]:
        bucket, _, rest = prefix.partition("/")
        if bucket not in BUCKETS:
            raise ValidationError(f"invalid storage prefix: {prefix!r}")

        def walk() -> list[StoredObject]:
            base = self.root / bucket
            out: list[StoredObject] = []
            if not base.is_dir():
                return out
            for p in base.rglob("*"):
                if p.is_file() and not p.name.startswith("."):
                    rel = p.relative_to(base).as_posix()
                    if rel.startswith(rest):
                        st = p.stat()
                        out.append(StoredObject(f"{bucket}/{rel}", st.st_size, st.st_mtime))
            return sorted(out, key=lambda o: o.key)

        return await asyncio.to_thread(walk)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_of(key).is_file)

    async def signed_url(self, key: str, expires_in: int) -> str:
        split_key(key)
        expires = int(time.time()) + expires_in
        sig = sign(self.signing_key, key, expires)
        return f"{self.public_base_url}/files/{quote(key)}?expires={expires}&sig={sig}"


class LocalFiles:
    """What the gateway needs to serve local signed URLs: verify, then find the file (read-only)."""

    def __init__(self, root: str | Path, signing_key: str) -> None:
        self.root = Path(root).resolve()
        self.signing_key = signing_key

    def verify(self, key: str, expires: str, sig: str) -> bool:
        return verify_signature(self.signing_key, key, expires, sig)

    def path_of(self, key: str) -> Path:
        """The file of ``key`` (raises ValidationError for a key outside the buckets)."""
        bucket, path = split_key(key)
        return self.root / bucket / path
