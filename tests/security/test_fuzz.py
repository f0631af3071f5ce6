"""Fuzz the live stack from the OpenAPI document the gateway serves (schemathesis, every check).

The whole system runs as in ``make up`` (the session's ``e2e_stack``). schemathesis reads
``GET /api/v1/openapi.json`` from the gateway and runs its phases against it: the document's
examples, coverage (boundary values, every missing/invalid parameter, undocumented methods,
missing credentials), property-based fuzzing with positive and negative data, and stateful
sequences along the links it infers. Every check is on, for every operation: no 5xx, every
status, content type, header and body as documented, invalid input rejected, valid input accepted
(a schema-valid upload carries a real song: ``fuzz_hooks``), auth not ignored, 405 with ``Allow``. The run is deterministic (fixed seed) and bounded (``MAX_EXAMPLES`` per
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
from montage_common.media import ffmpeg_exe
from montage_dev.devstack import ROOT

from tests.stack import ARTIFACTS, RunningStack, dev_token, unique

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 8
SEED = 20240611
RATE = "8/s"  # 480 requests a minute: under the per-user (600) and per-IP (1200) guard limits
REPORT_DIR = ARTIFACTS / "fuzz"

# Nothing is excluded: every operation, check and phase runs (a `--checks` option would narrow
# them). A stream is read for at most this many events. What the configuration adds: statuses
# that depend on the state a request meets, not on its shape, which a document cannot tell a fuzzer.
CONFIG = """
max-stream-events = 20

[[operations]]
# Cancelling a job that is already final is 400 (the spec's status), and so is retrying a job
# that is not failed or was retried already: the same request is accepted in another state.
include-operation-id-regex = "^(cancelJob|retryJob)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "410", "429"]

[[operations]]
# An Idempotency-Key sent again with another song or prompt is 422 (IETF httpapi draft): hypothesis
# draws the same short keys again, so a valid request can meet a key an earlier one used.
include-operation-id = "uploadAudio"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
# The Nexus submits refuse NUL at any depth of their body (Postgres cannot store it); the document
# says so for every named field, extra field and key, but checks nested values only one level deep
# (its generated TypeScript types cannot be recursive), so deeper NULs are not drawn.
include-operation-id-regex = "^nexus(Direct|Enriched)Submit$"
generation.allow-x00 = false

[[operations]]
# Not state but a limit of schemathesis 4.32: its coverage phase draws header values from A-Z, a-z
# and 0-9 only, so a `Last-Event-ID` it calls valid ("0") cannot hold the id's "-" and is rightly
# refused with 400. Every other check, and the query form of the same parameter, still run.
include-operation-id-regex = "^(streamJobEvents|streamUserEvents)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

[[operations]]
# The user stream never ends and the fuzzer's user has no jobs: after its `state` only a heartbeat
# would come (30 s), so each accepted request is read for its first message only.
include-operation-id = "streamUserEvents"
max-stream-events = 1
"""


def make_songs(directory: Path) -> Path:
    """Short real songs of each accepted kind (a tone, 3 and 7 s), for ``fuzz_hooks``."""
    directory.mkdir(parents=True, exist_ok=True)
    for seconds, hz in ((3, 440), (7, 330)):
        for ext in ("mp3", "wav", "flac"):
            out = directory / f"tone-{seconds}s.{ext}"
            if not out.exists():
                tone = f"sine=frequency={hz}:duration={seconds}:sample_rate=22050"
                subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", tone, "-ac", "1", str(out)],
                               check=True, timeout=60)  # fmt: skip
    return directory


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
    env["SCHEMATHESIS_HOOKS"] = "tests.security.fuzz_hooks"
    env["FUZZ_AUDIO_DIR"] = str(make_songs(config.parent / "songs"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
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
