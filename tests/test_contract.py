"""The published contract (``clients/``) is what the code generates, and no release is broken.

- ``clients/openapi.json`` equals the production document the code generates (pure Python).
- ``clients/montage-api.d.ts`` equals what ``openapi-typescript`` makes of it, and a strict
  TypeScript program reads error codes and SSE payloads through it (including lines that must
  not compile: an unknown error code, a field another event's data has).
- ``optic diff --check`` finds no breaking change from ``clients/openapi.release.json`` (the last
  release's document) to ``clients/openapi.json``, and does find one in a document with an
  operation and a response field removed (the check is not vacuous).

The npm tools come from ``make contract-tools`` (``tools/contract.py --install``: ``npm ci`` of
``tools/npm``); these tests skip, saying why, only when they cannot be installed.
Regenerate with ``make contract``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from montage_contracts import api
from montage_contracts.errors import ErrorCode

from tests.support import contract_tool

ROOT = Path(__file__).resolve().parents[1]


contract = contract_tool()


@pytest.fixture(scope="module")
def tools() -> Path:
    try:
        bin_dir: Path = contract.install()
    except contract.ToolsMissing as err:
        pytest.skip(f"contract tools unavailable (make contract-tools): {err}")
    return bin_dir


def test_committed_openapi_json_is_what_the_code_generates() -> None:
    assert contract.OPENAPI.read_text() == contract.openapi_text(), (
        "clients/openapi.json differs from what the code generates: run `make contract`"
    )


def test_error_codes_and_sse_payloads_have_their_own_schemas() -> None:
    doc: dict[str, Any] = json.loads(contract.OPENAPI.read_text())
    schemas = doc["components"]["schemas"]
    assert sorted(schemas["ErrorCode"]["enum"]) == sorted(ErrorCode)
    for name in ("Error", "RateLimited", "NexusError", "ErrorData"):
        assert schemas[name]["properties"]["code"]["$ref"] == "#/components/schemas/ErrorCode", name
    for cls in api.SSE_EVENTS:
        data = msgspec_data_type(cls)
        assert schemas[cls.__name__]["properties"]["data"] == {"$ref": f"#/components/schemas/{data}"}
        assert schemas[data]["type"] == "object", cls.__name__


def msgspec_data_type(cls: type[msgspec.Struct]) -> str:
    """The name of the payload Struct of an SSE event Struct (its ``data`` field)."""
    (data,) = (f.type for f in msgspec.structs.fields(cls) if f.name == "data")
    return str(data.__name__)


def test_committed_typescript_types_are_what_openapi_typescript_generates(tools: Path) -> None:
    expected = contract.types_text(contract.OPENAPI.read_text(), tools)
    assert contract.TYPES.read_text() == expected, (
        "clients/montage-api.d.ts differs from what openapi-typescript generates: run `make contract`"
    )


TS_PROGRAM = """\
import type { components, paths } from "./montage-api";

type ApiError = paths["/api/v1/jobs/{job_id}"]["get"]["responses"]["404"]["content"]["application/json"];
type SseEvent = components["schemas"]["SseEvent"];

function retryLater(error: ApiError): boolean {
  switch (error.code) {
    case "RATE_LIMIT_EXCEEDED":
    case "SERVICE_UNAVAILABLE":
    case "TOO_MANY_CONNECTIONS":
      return true;
    default:
      return false;
  }
}

function show(event: SseEvent): string {
  switch (event.event) {
    case "progress": return `${event.data.progress}% (${event.data.estimated_remaining} s left)`;
    case "stage_update": return `${event.data.stage} ${event.data.status}`;
    case "cost_update": return `${event.data.stage}: $${event.data.cost} of $${event.data.total}`;
    case "error": return `${event.data.code}: ${event.data.error} (retryable: ${event.data.retryable})`;
    case "completed": return event.data.video_url;
    default: return event.event;
  }
}

// @ts-expect-error an error code the API does not have
const unknownCode: ApiError["code"] = "FAILED";
// @ts-expect-error a progress event's data has no video_url
const wrongField = (e: components["schemas"]["ProgressEvent"]) => e.data.video_url;

export { retryLater, show, unknownCode, wrongField };
"""


def test_typescript_reads_error_codes_and_event_payloads_strictly(tools: Path, tmp_path: Path) -> None:
    (tmp_path / "montage-api.d.ts").write_text(contract.TYPES.read_text())
    (tmp_path / "main.ts").write_text(TS_PROGRAM)
    done = contract._run(
        [str(tools / "tsc"), "--strict", "--noEmit", "--target", "es2022", "--module", "es2022",
         "--moduleResolution", "bundler", str(tmp_path / "main.ts")]
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_breaking_change_since_the_release_document(tools: Path) -> None:
    done = contract.breaking(contract.RELEASE, contract.OPENAPI, tools)
    assert done.returncode == 0, (
        "clients/openapi.json breaks clients of clients/openapi.release.json (optic diff --check):\n"
        + done.stdout[-4000:]
    )


def test_the_breaking_change_check_sees_a_break(tools: Path, tmp_path: Path) -> None:
    doc: dict[str, Any] = json.loads(contract.OPENAPI.read_text())
    del doc["paths"]["/api/v1/jobs/{job_id}/download"]
    job = doc["paths"]["/api/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    status = doc["components"]["schemas"][job["schema"]["$ref"].rsplit("/", 1)[-1]]
    del status["properties"]["retryable"]
    status["required"].remove("retryable")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    done = contract.breaking(contract.OPENAPI, broken, tools)
    assert done.returncode != 0
    assert "GET /api/v1/jobs/{job_id}/download: removed" in done.stdout
    assert "retryable" in done.stdout
