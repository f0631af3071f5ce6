"""Every admin input validated as the public ones are: 400 ``VALIDATION_ERROR`` with the error
body for a parameter the services cannot use, never a 500 from Redis or Postgres refusing it.

Through the real gateway in front of the real services (``tests/stack.py``): hand-written cases
for what the services once answered 500 or 404 to (an entry id Redis refuses, ``?before=garbage``,
a NUL in a search), and a schemathesis run of every admin operation with an admin's token.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.admin.conftest import ADMIN_API, Clients, admin_token, status_of
from tests.security.test_fuzz import REPORT_DIR, run_schemathesis
from tests.stack import RunningStack, unique

pytestmark = [pytest.mark.e2e]

TOO_BIG = "99999999999999999999-0"  # 20 digits, over 2^64-1: Redis refuses it as a stream id
U64 = 2**64 - 1

BAD = [
    ("POST", f"dead-letters/composer/{TOO_BIG}/retry", None),
    ("DELETE", f"dead-letters/composer/{TOO_BIG}", None),
    ("POST", f"dead-letters/results/{U64 + 1}-0/retry", None),
    ("DELETE", f"dead-letters/results/0-{U64 + 1}", None),
    ("GET", "dead-letters", {"before": TOO_BIG}),
    ("GET", "dead-letters", {"before": "garbage"}),
    ("GET", "dead-letters", {"before": ""}),
    ("GET", "dead-letters", {"before": "1-0-0"}),
    ("GET", "dead-letters", {"stream": "nowhere"}),
    ("GET", "dead-letters", {"stream": "composer", "limit": "0"}),
    ("GET", "jobs", {"q": "a\x00b"}),
    ("GET", "jobs", {"q": "tab\there"}),
    ("GET", "jobs", {"q": "x" * 201}),
    ("GET", "jobs", {"status": "sideways"}),
    ("GET", "jobs", {"limit": "9" * 5000}),
    ("GET", "jobs", {"offset": "-1"}),
    ("GET", "queues", {"window": "59"}),
    ("GET", "actions", {"job_id": "not-a-uuid"}),
    ("GET", "actions", {"job_id": "\x00"}),
    ("POST", "dead-letters/composer/retry-all", {"limit": "0"}),
    ("GET", "ragnarok/jobs", {"q": "\x00"}),
    ("GET", "ragnarok/jobs", {"status": "sideways"}),
]


@pytest.mark.parametrize(("method", "path", "params"), BAD, ids=[f"{m} {p} {q}" for m, p, q in BAD])
async def test_a_parameter_the_services_cannot_use_is_400(
    clients: Clients, method: str, path: str, params: dict[str, str] | None
) -> None:
    status, body = await status_of(clients.admin, method, f"{ADMIN_API}/{path}", params=params)
    assert status == 400, (status, body)
    assert body["code"] == "VALIDATION_ERROR" and body["retryable"] is False, body
    assert set(body) == {"error", "code", "retryable", "job_id"}, body


async def test_the_largest_ids_redis_accepts_are_looked_up(clients: Clients) -> None:
    """The bound is exactly Redis's: the largest valid id is an ordinary missing entry (404), and
    pages from it."""
    top = f"{U64}-{U64}"
    for method, path in [
        ("POST", f"dead-letters/composer/{top}/retry"),
        ("DELETE", f"dead-letters/results/{top}"),
    ]:
        status, body = await status_of(clients.admin, method, f"{ADMIN_API}/{path}")
        assert status == 404 and body["code"] == "NOT_FOUND", (method, path, status, body)
    status, body = await status_of(clients.admin, "GET", f"{ADMIN_API}/dead-letters", params={"before": top})
    assert status == 200 and isinstance(body["dead_letters"], list), body
    status, body = await status_of(clients.admin, "GET", f"{ADMIN_API}/jobs", params={"q": "  someone  "})
    assert status == 200 and body["total"] == 0, body


# The admin operations only (the public ones are fuzzed by tests/security/test_fuzz.py), with
# every check and phase on, as an admin.
ADMIN_CONFIG = """
max-stream-events = 20

[[operations]]
# A finished job cannot be cancelled: 400 (VALIDATION_ERROR), the owner's answer to the same cause.
# Whether a schema-valid job id names a finished job is state, not data, so 400 is expected here
# (where other operations' state conflicts answer 409); every other check still runs.
include-operation-id = "cancelAdminJob"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "429", "5xx"]
"""


def test_admin_api_conforms_to_its_openapi_document(e2e_stack: RunningStack, tmp_path: Path) -> None:
    async def token() -> str:
        async with aiohttp.ClientSession() as session:
            return await admin_token(session, e2e_stack.url, unique("fuzz-admin"))

    config = tmp_path / "schemathesis.toml"
    config.write_text(ADMIN_CONFIG)
    report = REPORT_DIR / "admin"
    # deleteAdminJob is left out: its stateful phase deletes whatever job the listing shows, the
    # finished job the other end-to-end tests share among them (its inputs: tests/orchestrator/test_deletion.py).
    extra = ["--include-path-regex", "^/api/v1/admin/", "--exclude-operation-id", "deleteAdminJob"]
    proc, seconds = run_schemathesis(e2e_stack, asyncio.run(token()), config, report, extra=extra)
    print(proc.stdout[-20000:])
    print(proc.stderr[-5000:], file=sys.stderr)
    print(f"schemathesis finished in {seconds:.1f} s (reports in {report})")
    report.mkdir(parents=True, exist_ok=True)
    (report / "summary.json").write_text(json.dumps({"seconds": round(seconds, 1), "returncode": proc.returncode}))
    assert "No operations" not in proc.stdout, "the filter matched no admin operation"
    assert proc.returncode == 0, "schemathesis found admin responses that contradict the document (output above)"
