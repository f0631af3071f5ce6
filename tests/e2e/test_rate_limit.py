"""(4) The 6th job of a user within an hour is refused with 429 and ``Retry-After``."""

from __future__ import annotations

from pathlib import Path

import pytest
from montage_cli.errors import ApiError

from tests.e2e.flows import PROMPT
from tests.stack import ClientFactory, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_sixth_job_in_an_hour_is_429(as_user: ClientFactory, song: Path) -> None:
    dave = await as_user(unique("dave"))
    for _ in range(5):
        job = await dave.upload(song, PROMPT)
        assert job["status"] == "queued"
        await dave.cancel(job["job_id"])  # keep the machine free for the other tests
    with pytest.raises(ApiError) as info:
        await dave.upload(song, PROMPT)
    err = info.value
    assert err.status == 429 and err.code == "RATE_LIMIT_EXCEEDED"
    assert err.retry_after is not None and 3500 < err.retry_after <= 3600, err.retry_after
    assert err.body["retry_after"] == int(err.retry_after)
    assert err.body["limit"] == 5 and err.body["window"]
    assert (await dave.jobs(limit=50))["total"] == 5
    # another user is not affected
    erin = await as_user(unique("erin"))
    job = await erin.upload(song, PROMPT)
    await erin.cancel(job["job_id"])
