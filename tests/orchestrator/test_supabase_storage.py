"""The Supabase Storage backend against the fake of the Storage HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from montage_common.settings import CommonSettings
from montage_common.storage import create_storage
from montage_common.storage.supabase import StorageUnavailable, SupabaseStorage
from montage_contracts.errors import NotFound
from montage_dev.devstack import free_port
from montage_dev.fakes.supabase_storage import FakeSupabaseStorage

KEY = "service-role-key"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[str, Any]]:
    state = FakeSupabaseStorage(KEY)
    runner = web.AppRunner(state.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", state
    await runner.cleanup()


@pytest.fixture
async def supa(fake: tuple[str, Any]) -> AsyncIterator[SupabaseStorage]:
    settings = CommonSettings(storage_backend="supabase", supabase_url=fake[0], supabase_service_key=KEY)
    storage = create_storage(settings)
    assert isinstance(storage, SupabaseStorage)
    yield storage
    await storage.close()


async def test_put_get_list_exists_delete(supa: SupabaseStorage, fake: tuple[str, Any], tmp_path: Path) -> None:
    src = tmp_path / "song.wav"
    src.write_bytes(b"RIFF....WAVE")
    assert await supa.put_file("audio-uploads/u1/j1/song.wav", src, "audio/wav") == 12
    await supa.put_bytes("video-clips/j1/clip_0.mp4", b"a")
    await supa.put_bytes("video-clips/j1/clip_1.mp4", b"bb")
    await supa.put_bytes("video-clips/j2/clip_0.mp4", b"ccc")
    await supa.put_bytes("video-clips/j2/clip_0.mp4", b"cccc")  # overwrite (upsert)
    dest = await supa.get_file("audio-uploads/u1/j1/song.wav", tmp_path / "out" / "x.wav")
    assert dest.read_bytes() == b"RIFF....WAVE"
    assert fake[1].objects["audio-uploads"]["u1/j1/song.wav"].content_type == "audio/wav"
    listed = await supa.list("video-clips/")
    assert [(o.key, o.size) for o in listed] == [
        ("video-clips/j1/clip_0.mp4", 1),
        ("video-clips/j1/clip_1.mp4", 2),
        ("video-clips/j2/clip_0.mp4", 4),
    ]
    assert all(o.modified_at > 0 for o in listed)
    assert [o.key for o in await supa.list("video-clips/j1/")] == [
        "video-clips/j1/clip_0.mp4",
        "video-clips/j1/clip_1.mp4",
    ]
    assert [o.key for o in await supa.list("audio-uploads/u1/")] == ["audio-uploads/u1/j1/song.wav"]
    assert await supa.exists("video-clips/j1/clip_0.mp4")
    assert not await supa.exists("video-clips/j1/clip_9.mp4")
    await supa.delete(["video-clips/j1/clip_0.mp4", "video-clips/j1/clip_1.mp4", "video-clips/j1/missing.mp4"])
    assert [o.key for o in await supa.list("video-clips/")] == ["video-clips/j2/clip_0.mp4"]
    with pytest.raises(NotFound):
        await supa.get_file("video-clips/j1/clip_0.mp4", tmp_path / "nope")


async def test_list_pages_through_many_objects(supa: SupabaseStorage) -> None:
    for i in range(130):
        await supa.put_bytes(f"reference-images/j/{i:03d}.png", b"x")
    assert len(await supa.list("reference-images/j/")) == 130


async def test_signed_url_reads_until_expiry(supa: SupabaseStorage, fake: tuple[str, Any]) -> None:
    await supa.put_bytes("video-outputs/j1/final_video.mp4", b"video")
    url = await supa.signed_url("video-outputs/j1/final_video.mp4", 3600)
    assert url.startswith(f"{fake[0]}/storage/v1/object/sign/video-outputs/j1/final_video.mp4?token=")
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as resp:
            assert resp.status == 200 and await resp.read() == b"video"
        async with s.get(url.replace("token=", "token=1")) as resp:
            assert resp.status == 400
        expired = await supa.signed_url("video-outputs/j1/final_video.mp4", -10)
        async with s.get(expired) as resp:
            assert resp.status == 400
    with pytest.raises(NotFound):
        await supa.signed_url("video-outputs/j1/missing.mp4", 60)


async def test_bad_key_is_translated(fake: tuple[str, Any]) -> None:
    storage = SupabaseStorage(fake[0], "wrong-key")
    try:
        with pytest.raises(StorageUnavailable):
            await storage.put_bytes("video-clips/j/x.mp4", b"x")
    finally:
        await storage.close()
