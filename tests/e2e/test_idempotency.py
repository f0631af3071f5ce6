"""``Idempotency-Key`` on ``POST /api/v1/upload-audio`` through the whole stack (every service its
own process, real Redis and Postgres): ten concurrent uploads under one key create one job, store
one song and take one rate-limit slot; the key with another prompt answers 422; a malformed key 400.

Behind the gateway the test looks at the stack's local storage directory (the stored songs) and at
the user's rate-limit window in Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from montage_common.redis import create_redis
from montage_contracts.keys import Keys

from tests.e2e.flows import PROMPT
from tests.stack import ClientFactory, RunningStack, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _form(song: Path, prompt: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("user_prompt", prompt)
    form.add_field("audio_file", song.read_bytes(), filename=song.name, content_type="audio/mpeg")
    return form


async def test_ten_concurrent_uploads_with_one_key_make_one_job(
    e2e_stack: RunningStack, as_user: ClientFactory, song: Path
) -> None:
    user = unique("ida")
    client = await as_user(user)
    key = str(uuid.uuid4())

    async def upload(prompt: str = PROMPT, idem: str = key) -> tuple[int, dict[str, Any], str | None]:
        headers = client.headers({"Idempotency-Key": idem})
        async with client.session.post(
            client.url("/api/v1/upload-audio"), data=_form(song, prompt), headers=headers
        ) as r:
            return r.status, await r.json(content_type=None), r.headers.get("Idempotent-Replayed")

    results = await asyncio.gather(*(upload() for _ in range(10)))
    assert [status for status, _, _ in results] == [201] * 10, results
    job_ids = {body["job_id"] for _, body, _ in results}
    assert len(job_ids) == 1
    assert len({str(body) for _, body, _ in results}) == 1  # the same body, byte for byte as JSON
    assert sum(replayed == "true" for _, _, replayed in results) == 9
    (job_id,) = job_ids
    try:
        assert (await client.jobs(limit=50))["total"] == 1
        stored = [p for p in (e2e_stack.storage_dir / "audio-uploads" / user).rglob("*") if p.is_file()]
        assert [p.parent.name for p in stored] == [job_id]
        redis = create_redis(e2e_stack.redis_url)
        try:
            assert await redis.zcard(Keys(e2e_stack.namespace).rate_limit(user)) == 1
        finally:
            await redis.aclose()

        # the key with another prompt: 422, nothing created
        status, body, _ = await upload(PROMPT + " Slow motion throughout.")
        assert status == 422 and body["code"] == "IDEMPOTENCY_KEY_REUSED", body
        # a malformed key: 400
        status, body, _ = await upload(idem="not a key")
        assert status == 400 and body["code"] == "VALIDATION_ERROR", body
        assert (await client.jobs(limit=50))["total"] == 1
    finally:
        await client.cancel(job_id)  # keep the machine free for the other tests
