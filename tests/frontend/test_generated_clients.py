"""Clients generated from the served OpenAPI document work as they come.

- TypeScript: ``openapi-typescript`` (npm, pinned with the published contract's tools:
  ``tools/contract.py``) turns ``/api/v1/openapi.json`` into types, and a small
  program that uses them — including lines that must *not* compile (a missing required field,
  an unknown error code) — is checked with ``tsc --strict``.
- Python: ``openapi-python-client`` generates a client package, and a script using only that
  package (and the ``httpx`` client it is built on) runs one upload → watch → download against
  the live stack.

The tools are installed on first use into ``.tools/`` (git-ignored): the npm packages with
``npm ci`` of ``tools/npm`` (``make contract-tools``), the Python generator into its own
virtualenv with ``uv`` (its dependencies stay out of the workspace's lockfile). A missing ``npm``/``node`` or no registry
skips with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from montage_dev.devstack import ROOT

from tests.e2e.flows import PROMPT
from tests.stack import ARTIFACTS, RunningStack, dev_token, unique
from tests.support import contract_tool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TOOLS = ROOT / ".tools"
PY_TOOL = TOOLS / "openapi-python-client"
PY_PACKAGE = "openapi-python-client>=0.21,<0.30"
OUT = ARTIFACTS / "generated-clients"


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **kw)  # type: ignore[call-overload]


def _npm_tools() -> tuple[Path, Path]:
    """openapi-typescript and tsc as pinned for the published contract (``make contract-tools``)."""
    contract = contract_tool()
    try:
        bins: Path = contract.install()
    except contract.ToolsMissing as err:
        pytest.skip(f"cannot generate the TypeScript client: {err}")
    return bins / "openapi-typescript", bins / "tsc"


def _python_generator() -> Path:
    python = PY_TOOL / "bin" / "python"
    exe = PY_TOOL / "bin" / "openapi-python-client"
    if not exe.exists():
        uv = TOOLS / "bin" / "uv"
        if not uv.exists():
            pytest.skip("no .tools/bin/uv (make install puts it there): cannot install openapi-python-client")
        made = _run([str(uv), "venv", "-q", "--python", sys.executable, str(PY_TOOL)])
        installed = made.returncode == 0 and (
            _run([str(uv), "pip", "install", "-q", "--python", str(python), PY_PACKAGE]).returncode == 0
        )
        if not installed or not exe.exists():
            pytest.skip(f"could not install {PY_PACKAGE} into {PY_TOOL}")
    return exe


@pytest.fixture(scope="module")
def served_document(e2e_stack: RunningStack) -> Path:
    """The document exactly as the running gateway serves it."""

    async def fetch() -> dict[str, object]:
        async with aiohttp.ClientSession() as s, s.get(f"{e2e_stack.url}/api/v1/openapi.json") as r:
            assert r.status == 200
            body: dict[str, object] = await r.json()
            return body

    import asyncio

    doc = asyncio.run(fetch())
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "openapi.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


TS_PROGRAM = """\
import type { components, paths } from "./montage-api";

type Job = components["schemas"]["Job"];
type Status = components["schemas"]["JobStatus"];
type Code = components["schemas"]["ErrorCode"];
type Created = paths["/api/v1/upload-audio"]["post"]["responses"]["201"]["content"]["application/json"];
type GetJob = paths["/api/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"];
type ApiError = paths["/api/v1/jobs/{job_id}"]["get"]["responses"]["404"]["content"]["application/json"];
type TooMany = paths["/api/v1/jobs/{job_id}/stream"]["get"]["responses"]["503"]["content"]["application/json"];
type Ticket = components["schemas"]["StreamTicket"];
type Retried = paths["/api/v1/jobs/{job_id}/retry"]["post"]["responses"]["201"]["content"]["application/json"];
type SseEvent = components["schemas"]["SseEvent"];
type UserSseEvent = components["schemas"]["UserSseEvent"];
type Assets = paths["/api/v1/jobs/{job_id}/assets"]["get"]["responses"]["200"]["content"]["application/json"];

const job: GetJob = {
  job_id: "6f1c0000-0000-4000-8000-000000000000",
  status: "failed",
  current_stage: "video_generator",
  progress: 40,
  estimated_remaining: 0,
  total_cost: 0.25,
  video_url: null,
  error_message: "Job cancelled by user",
  error_code: "CANCELLED",
  retryable: false,
  created_at: "2026-01-01T12:00:00.000Z",
  updated_at: "2026-01-01T12:01:00.000Z",
  queue_position: null,
  estimated_start: null,
  retry_of: null,
  retried_by: null,
  poster_url: null,
};

// Required fields are required: strict mode needs no undefined checks here.
const percent: number = job.progress;
const remaining: number = job.estimated_remaining;
const code: "CANCELLED" | "TIMEOUT" | "BUDGET_EXCEEDED" | "MODULE_FAILURE" | "GENERATION_ERROR"
  | "VALIDATION_ERROR" | null = job.error_code;
const canRetry: boolean = job.retryable;

function describe(created: Created, error: ApiError, busy: TooMany, ticket: Ticket): string {
  return `${created.job_id} ${created.status} ${created.estimated_cost} ${error.code} ${error.retryable} `
    + `${busy.code} ${ticket.ticket} ${ticket.expires_in}`;
}

function retried(r: Retried): string {
  const reused: string[] = r.reused_stages;
  return `${r.job_id} retries ${r.retry_of} from ${r.resumed_from}, reusing ${reused.join(", ")}`;
}

function eventName(event: SseEvent): string {
  switch (event.event) {
    case "state": return `state at ${event.id}`;
    case "heartbeat": return "heartbeat";
    default: return `${event.event} ${event.id}`;
  }
}

// Previews and the user stream (issue #25): narrowing on `event` types `data`, job_id included.
function userEvent(event: UserSseEvent): string {
  switch (event.event) {
    case "state": return event.data.jobs.map((j) => j.job_id).join(",");
    case "preview": return `${event.data.job_id} ${event.data.kind} ${event.data.index} ${event.data.url}`;
    case "completed": return `${event.data.job_id} ${event.data.video_url}`;
    case "heartbeat": return event.data.timestamp;
    default: return `${event.data.job_id} ${event.event} ${event.id}`;
  }
}

function previewUrls(assets: Assets): string[] {
  return assets.assets.filter((a) => a.kind === "still" || a.kind === "clip").map((a) => a.url);
}

async function getJob(jobId: string, token: string): Promise<GetJob> {
  const resp = await fetch(`/api/v1/jobs/${jobId}`, { headers: { Authorization: `Bearer ${token}` } });
  return (await resp.json()) as GetJob;
}

// @ts-expect-error a job body without its required fields does not type-check
const incomplete: Job = { job_id: "x", status: "queued" };
// @ts-expect-error an error code the API does not have
const wrongCode: Job["error_code"] = "FAILED";
// @ts-expect-error a status the API does not have
const wrongStatus: Status = "cancelled";
// @ts-expect-error an error code outside the catalogue
const notInCatalogue: Code = "FAILED";

export {
  percent, remaining, code, canRetry, describe, retried, eventName, getJob, incomplete, wrongCode, wrongStatus,
  notInCatalogue,
};
"""


def test_typescript_client_compiles_strict(served_document: Path, tmp_path: Path) -> None:
    gen, tsc = _npm_tools()
    work = OUT / "typescript"
    work.mkdir(parents=True, exist_ok=True)
    done = _run([str(gen), str(served_document), "-o", str(work / "montage-api.d.ts")])
    assert done.returncode == 0, done.stderr
    (work / "main.ts").write_text(TS_PROGRAM)
    compiled = _run(
        [str(tsc), "--strict", "--noEmit", "--target", "es2022", "--module", "es2022",
         "--moduleResolution", "bundler", "--lib", "es2022,dom", str(work / "main.ts")]
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


PY_SCRIPT = """\
import json, sys, time
from pathlib import Path

import httpx
from montage_api_client import AuthenticatedClient
from montage_api_client.api.jobs import create_stream_ticket, get_download, get_job, upload_audio
from montage_api_client.models import UploadForm
from montage_api_client.types import File

base, token, song, prompt = sys.argv[1:5]
client = AuthenticatedClient(base_url=base, token=token, timeout=httpx.Timeout(120.0))
with open(song, "rb") as f:
    form = UploadForm(audio_file=File(payload=f, file_name="song.mp3", mime_type="audio/mpeg"), user_prompt=prompt)
    created = upload_audio.sync_detailed(client=client, body=form)
assert created.status_code == 201, (created.status_code, created.content)
job_id = created.parsed.job_id
print("created", job_id, created.parsed.estimated_cost, flush=True)

# watch: a ticket from the generated client, the stream read with its own httpx client
ticket = create_stream_ticket.sync(job_id=job_id, client=client).ticket
events, final = [], None
http = client.get_httpx_client()
with http.stream("GET", f"/api/v1/jobs/{job_id}/stream", params={"ticket": ticket, "last_event_id": "0-0"},
                 timeout=httpx.Timeout(120.0)) as resp:
    assert resp.status_code == 200, resp.status_code
    name = None
    for line in resp.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name:
            events.append(name)
            if name in ("completed", "error"):
                final = (name, json.loads(line[6:]))
                break
assert final and final[0] == "completed", final
job = get_job.sync(job_id=job_id, client=client)
assert job.status == "completed" and job.progress == 100 and job.error_code is None and job.retryable is False, job
dl = get_download.sync(job_id=job_id, client=client)
video = httpx.get(dl.download_url, timeout=60.0)
assert video.status_code == 200 and video.content[4:8] == b"ftyp", (video.status_code, video.content[:16])
Path(sys.argv[5]).write_bytes(video.content)
print("events", len(events), "stages", events.count("stage_update"), "video", len(video.content), flush=True)
"""


async def test_python_client_runs_upload_watch_download(
    served_document: Path, e2e_stack: RunningStack, song: Path, tmp_path: Path
) -> None:
    generator = _python_generator()
    work = OUT / "python" / "montage_api_client"  # --meta none: the package itself
    shutil.rmtree(work, ignore_errors=True)
    done = _run(
        [str(generator), "generate", "--path", str(served_document), "--output-path", str(work), "--meta", "none"]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [w for w in done.stdout.splitlines() if "Unable to" in w], done.stdout  # nothing was left out
    async with aiohttp.ClientSession() as s:
        token = await dev_token(s, e2e_stack.url, unique("generated"))
    script = tmp_path / "run.py"
    script.write_text(PY_SCRIPT)
    out = tmp_path / "video.mp4"
    env = {**os.environ, "PYTHONPATH": str(work.parent)}
    ran = _run(
        [str(PY_TOOL / "bin" / "python"), str(script), e2e_stack.url, token, str(song), PROMPT, str(out)], env=env
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert out.stat().st_size > 10_000
    print(ran.stdout)
