"""The storage interface: what the services need from object storage, and key validation.

Objects are addressed by *storage keys* ``"<bucket>/<path>"`` (built by
:mod:`montage_common.storage.layout`).
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from montage_contracts.errors import ValidationError

from montage_common.storage.layout import BUCKETS


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    modified_at: float  # unix seconds


def split_key(key: str) -> tuple[str, str]:
    """``"bucket/a/b"`` → ``("bucket", "a/b")``; refuses unknown buckets and traversal."""
    bucket, _, path = key.partition("/")
    if bucket not in BUCKETS or not path:
        raise ValidationError(f"invalid storage key: {key!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise ValidationError(f"invalid storage key: {key!r}")
    return bucket, path


class Storage(ABC):
    """What the services need from object storage."""

    @abstractmethod
    async def put_file(self, key: str, source: Path, content_type: str = "application/octet-stream") -> int:
        """Upload a local file; returns its size."""

    @abstractmethod
    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> int:
        """Upload bytes; returns the size."""

    @abstractmethod
    async def get_file(self, key: str, dest: Path) -> Path:
        """Download an object to ``dest``; raises NotFound."""

    @abstractmethod
    async def delete(self, keys: list[str]) -> None:
        """Delete objects; missing ones are ignored."""

    @abstractmethod
    async def list(self, prefix: str) -> list[StoredObject]:
        """Objects whose key starts with ``prefix`` (``"bucket/"`` or ``"bucket/dir/"``)."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def signed_url(self, key: str, expires_in: int) -> str:
        """A URL that reads the object until ``expires_in`` seconds from now."""

    async def copy(self, source: str, dest: str, content_type: str = "application/octet-stream") -> int:
        """Copy an object to another key (a retried job's files under its own prefix); raises NotFound.

        This default goes through a temporary file; a backend with a server-side copy overrides it.
        """
        with tempfile.TemporaryDirectory(prefix="montage-copy-") as tmp:
            path = await self.get_file(source, Path(tmp) / "object")
            return await self.put_file(dest, path, content_type)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
