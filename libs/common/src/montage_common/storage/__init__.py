"""Object storage: the interface, its backends beside it, and the key layout.

- :mod:`.base`: :class:`Storage` (what the services need) and key validation;
- :mod:`.layout`: every storage key and prefix of a job, built in one place;
- :mod:`.local`: a directory tree with HMAC-signed URLs, and :class:`LocalFiles` (what the
  gateway serves them with);
- :mod:`.supabase`: Supabase Storage (imported only when configured).
"""

from __future__ import annotations

from montage_common.settings import CommonSettings
from montage_common.storage.base import Storage, StoredObject, split_key
from montage_common.storage.layout import BUCKETS
from montage_common.storage.local import LocalFiles, LocalStorage, sign, verify_signature

__all__ = [
    "BUCKETS",
    "LocalFiles",
    "LocalStorage",
    "Storage",
    "StoredObject",
    "create_storage",
    "sign",
    "split_key",
    "verify_signature",
]


def create_storage(settings: CommonSettings) -> Storage:
    """The configured backend (``STORAGE_BACKEND``): ``local`` (default) or ``supabase``."""
    if settings.storage_backend == "supabase":
        from montage_common.storage.supabase import SupabaseStorage

        return SupabaseStorage(settings.supabase_url, settings.supabase_service_key)
    return LocalStorage(settings.storage_dir, settings.storage_signing_key, settings.public_base_url)
