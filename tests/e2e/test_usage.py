"""``GET /api/v1/usage`` agrees with the job-creation limit the uploads meet, and the upload's
``RateLimit`` headers count down to the 429 (draft-ietf-httpapi-ratelimit-headers)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from montage_cli.client import MontageClient, audio_content_type
from montage_cli.errors import ApiError
from montage_contracts.routes import route

from tests.e2e.flows import PROMPT
from tests.stack import ClientFactory, RunningStack, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

POLICY = '"jobs";q=5;w=3600'
RATELIMIT = re.compile(r'^"jobs";r=(\d+);t=(\d+)$')


async def _upload(client: MontageClient, song: Path) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    form = aiohttp.FormData()
    form.add_field("user_prompt", PROMPT)
    form.add_field("audio_file", song.read_bytes(), filename=song.name, content_type=audio_content_type(song))
    url = client.url(route("uploadAudio").path)
    async with client.session.post(url, data=form, headers=client.headers()) as resp:
        return resp.status, await resp.json(), resp.headers


def _ratelimit(headers: Any) -> tuple[int, int]:
    assert headers["RateLimit-Policy"] == POLICY
    match = RATELIMIT.match(headers["RateLimit"])
    assert match is not None, headers["RateLimit"]
    return int(match[1]), int(match[2])


async def test_usage_agrees_with_the_sixth_uploads_429(as_user: ClientFactory, song: Path) -> None:
    gina = await as_user(unique("gina"))
    fresh = await gina.usage()
    assert fresh["jobs_used"] == 0 and fresh["jobs_remaining"] == 5 and fresh["jobs_limit"] == 5
    assert fresh["window_seconds"] == 3600 and fresh["next_slot_at"] is None and fresh["retry_after"] == 0
    assert fresh["active_jobs"] == 0 and fresh["spent_this_month"] == 0

    remaining_seen = []
    first_slot: str | None = None
    for n in range(1, 6):
        status, body, headers = await _upload(gina, song)
        assert status == 201, body
        remaining, reset = _ratelimit(headers)
        remaining_seen.append(remaining)
        assert 3590 <= reset <= 3600  # the first upload's slot frees in (just under) an hour
        usage = await gina.usage()
        assert usage["jobs_used"] == n and usage["jobs_remaining"] == 5 - n == remaining
        assert usage["active_jobs"] == n  # queued or processing: none is cancelled yet
        first_slot = first_slot or usage["next_slot_at"]
        assert usage["next_slot_at"] == first_slot  # the oldest job sets it, later ones do not move it
    assert remaining_seen == [4, 3, 2, 1, 0]

    before = await gina.usage()
    assert before["retry_after"] >= 1 and before["jobs_remaining"] == 0
    status, body, headers = await _upload(gina, song)
    assert status == 429 and body["code"] == "RATE_LIMIT_EXCEEDED"
    remaining, reset = _ratelimit(headers)
    assert remaining == 0 and reset == int(headers["Retry-After"]) == body["retry_after"]
    after = await gina.usage()
    # The refused upload took no slot, and usage tells the same wait as the 429 (read around it).
    assert after["jobs_used"] == body["limit"] == 5 and after["next_slot_at"] == first_slot
    assert after["retry_after"] <= body["retry_after"] <= before["retry_after"]

    for job in (await gina.jobs(limit=50))["jobs"]:
        await gina.cancel(job["job_id"])  # keep the machine free for the other tests
    cancelled = await gina.usage()
    assert cancelled["active_jobs"] == 0
    assert cancelled["jobs_used"] == 5  # cancelling does not give a creation back


def _montage(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "montage_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_montage_usage(e2e_stack: RunningStack, as_user: ClientFactory, song: Path, tmp_path: Path) -> None:
    user = unique("hank")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONTAGE_", "REDIS_", "DATABASE_"))}
    env |= {"MONTAGE_URL": e2e_stack.url, "MONTAGE_STACK_ENV": str(tmp_path / "none.env")}
    env["MONTAGE_TOKEN"] = _montage(["token", "--user", user], {**env, "ENVIRONMENT": "development"}).strip()
    assert _montage(["usage"], env).startswith("0 of 5 jobs used in the last 3600 s\n")
    hank = await as_user(user)
    job = await hank.upload(song, PROMPT)
    try:
        body = json.loads(_montage(["usage", "--json"], env))
        assert body["jobs_used"] == 1 and body["jobs_remaining"] == 4
        assert f"a slot frees at {body['next_slot_at']}" in _montage(["usage"], env)
    finally:
        with contextlib.suppress(ApiError):  # keep the machine free, unless it finished already
            await hank.cancel(job["job_id"])
