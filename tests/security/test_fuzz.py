"""Fuzz the live stack from the OpenAPI document the gateway serves (schemathesis, every check).

The whole system runs as in ``make up`` (the session's ``e2e_stack``). schemathesis reads
``GET /api/v1/openapi.json`` from the gateway and runs its phases against it: the document's
examples, coverage (boundary values, every missing/invalid parameter, undocumented methods,
missing credentials), property-based fuzzing with positive and negative data, and stateful
sequences along the links it infers. Every check is on: no 5xx, every status, content type,
header and body as documented, invalid input rejected, valid input accepted, auth not ignored,
405 with ``Allow``. The run is deterministic (fixed seed) and bounded (``MAX_EXAMPLES`` per
operation and phase).

Traffic stays under the gateway's request guard (1200 requests per minute per IP, 600 per user)
so the rest of the session's tests sharing this stack are not throttled afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.stack import ARTIFACTS, RunningStack, dev_token, unique

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 8
SEED = 20240611
RATE = "8/s"  # 480 requests a minute: under the per-user (600) and per-IP (1200) guard limits
REPORT_DIR = ARTIFACTS / "fuzz"

# What is excluded, and why. Nothing else is: every operation, check and phase runs.
CONFIG = """
# Every check is enabled by default (a `--checks` option would override the per-operation
# settings below). A stream is read for at most this many events.
max-stream-events = 20

[[operations]]
# A random byte string that matches the schema (`contentMediaType: application/octet-stream`) is not
# an MP3/WAV/FLAC of at most 10 minutes; JSON Schema cannot say "decodable audio", so valid-per-schema
# uploads are rightly answered 400. Every other check still runs on the upload.
include-operation-id = "uploadAudio"
checks.positive_data_acceptance.enabled = false

[[operations]]
# The Nexus submits forward any extra JSON fields to RAGNAROK and record them in Postgres, which
# cannot store NUL; the proxy refuses NUL anywhere in the body with 400. JSON Schema cannot say
# "no NUL in any nested value of any additional property", so schema-valid bodies would carry NUL
# in their extras. The named fields' patterns exclude NUL and keep being fuzzed with it in negative
# mode; tests/ragnarok covers the 400.
include-operation-id-regex = "^nexus(Direct|Enriched)Submit$"
generation.allow-x00 = false
"""


def run_schemathesis(
    stack: RunningStack, token: str, config: Path, report_dir: Path = REPORT_DIR, extra: list[str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """One schemathesis run against the stack's served document (``extra``: more CLI options,
    such as an operation filter)."""
    argv = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{stack.url}/api/v1/openapi.json",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",  # hypothesis' lambda-source cache is not thread-safe (a Runtime Error with 2 workers)
        "--rate-limit",
        RATE,
        "--request-timeout",
        "30",
        "--header",
        f"Authorization: Bearer {token}",
        "--report",
        "junit,ndjson",
        "--report-dir",
        str(report_dir),
        "--output-truncate",
        "false",
        "--warnings",
        "off",
        *(extra or []),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(config.parent / "hypothesis")
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=config.parent, check=False)
    return proc, time.monotonic() - started


def test_live_stack_conforms_to_its_openapi_document(e2e_stack: RunningStack, tmp_path: Path) -> None:
    async def token() -> str:
        async with aiohttp.ClientSession() as session:
            return await dev_token(session, e2e_stack.url, unique("fuzz"))

    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    proc, seconds = run_schemathesis(e2e_stack, asyncio.run(token()), config)
    print(proc.stdout[-20000:])
    print(proc.stderr[-5000:], file=sys.stderr)
    print(f"schemathesis finished in {seconds:.1f} s (reports in {REPORT_DIR})")
    summary = REPORT_DIR / "summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps({"seconds": round(seconds, 1), "returncode": proc.returncode}))
    assert proc.returncode == 0, "schemathesis found responses that contradict the document (output above)"
