"""The OpenAPI document: generated from the API Structs, complete, valid, and served as built.

The live check (schemathesis against the running stack) is ``tests/security/test_fuzz.py``.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import schemathesis
from montage_contracts import api
from montage_contracts.errors import ErrorCode
from montage_contracts.pipeline import STAGES
from montage_gateway.app import create_app
from montage_gateway.openapi import document
from montage_gateway.settings import GatewaySettings
from montage_orchestrator.jobs import list_item, status_body

OPS_ROUTES = {"/healthz", "/readyz", "/metrics"}  # operational, not part of the public API
TEXT_MEDIA = {"text/html", "text/event-stream"}
_wire = msgspec.json.Encoder(decimal_format="number")


def _norm(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def _documented(development: bool) -> dict[str, Any]:
    return document(development=development)


@pytest.mark.parametrize("environment", ["development", "production"])
def test_every_route_is_documented_and_every_documented_operation_served(environment: str) -> None:
    settings = GatewaySettings(environment=environment, supabase_jwt_secret="x" * 40)  # type: ignore[arg-type]
    app = create_app(settings)
    registered: set[tuple[str, str]] = set()
    prefixes: set[str] = set()  # catch-all forwarding routes, if the app still has any
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource else ""
        if canonical in OPS_ROUTES or route.method in ("HEAD", "OPTIONS"):
            continue
        if route.method == "*":
            prefixes.add(canonical.split("{")[0])
            continue
        registered.add((route.method.lower(), _norm(canonical)))
    doc = _documented(environment == "development")
    documented = {(m, _norm(p)) for p, ops in doc["paths"].items() for m in ops}
    assert registered - documented == set(), "routes missing from openapi.json"
    for method, path in documented - registered:
        assert any(path.startswith(p) for p in prefixes), f"{method.upper()} {path} is documented but not served"


@pytest.mark.parametrize("development", [True, False])
def test_document_is_valid_openapi_31_and_loads_in_schemathesis(development: bool) -> None:
    doc = _documented(development)
    assert doc["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_dict(doc)
    labels = [result.ok().label for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(labels) == sum(len(ops) for ops in doc["paths"].values())


def test_operations_are_complete() -> None:
    doc = _documented(True)
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            responses = op["responses"]
            authed = op.get("security", doc["security"]) != []
            if authed:
                assert {"401", "429", "503"} <= set(responses), where
            assert "429" in responses, f"{where}: the request guard applies to every public route"
            if "{" in path:
                assert "400" in responses, f"{where}: a malformed path segment is answered 400"
            for status, reply in responses.items():
                assert "X-Request-ID" in reply["headers"], f"{where} {status}"
                if status == "429":
                    assert "Retry-After" in reply["headers"], where
                if int(status) >= 400:
                    assert set(reply["content"]) == {"application/json"}, f"{where} {status}"


def test_no_schema_is_written_by_hand() -> None:
    """Bodies are component references (Structs); only raw text media have a plain string schema."""
    doc = _documented(True)

    def refs_only(schema: dict[str, Any]) -> bool:
        if "$ref" in schema:
            return True
        return "anyOf" in schema and all("$ref" in s for s in schema["anyOf"])

    for ops in doc["paths"].values():
        for op in ops.values():
            bodies = [c["schema"] for c in op.get("requestBody", {}).get("content", {}).values()]
            for status, reply in op["responses"].items():
                for media, content in reply.get("content", {}).items():
                    if media == "text/html" or (op["operationId"] == "getOpenApi" and status == "200"):
                        assert content["schema"] in ({"type": "string"}, {"type": "object"})
                    else:
                        bodies.append(content["schema"])
            for schema in bodies:
                assert refs_only(schema), f"{op['operationId']}: {schema}"
    names = set(doc["components"]["schemas"])
    structs = {
        cls.__name__
        for cls in vars(api).values()
        if isinstance(cls, type) and issubclass(cls, msgspec.Struct) and cls is not msgspec.Struct
    }
    # and the vocabularies the Structs speak: the enums of montage_contracts (JobStatus, ErrorCode, …)
    enums = {cls.__name__ for cls in vars(api).values() if isinstance(cls, type) and issubclass(cls, enum.Enum)}
    assert {"JobStatus", "ErrorCode"} <= names
    # and the schemas with no Python type, each in one place (a recursive JSON Schema: StorableJson)
    assert names - {"SseEvent", "UserSseEvent"} <= structs | enums | set(api.EXTRA_COMPONENTS)
    assert sorted(doc["components"]["schemas"]["ErrorCode"]["enum"]) == sorted(str(c) for c in ErrorCode)
    assert doc["components"]["schemas"]["Error"]["properties"]["code"]["$ref"] == "#/components/schemas/ErrorCode"


def test_stage_names_match_the_pipeline() -> None:
    assert api.StageName.__args__ == STAGES  # type: ignore[attr-defined]


def test_sse_events_cover_every_event_the_pipeline_emits() -> None:
    from montage_contracts.events import DATA, LOGGED_EVENTS

    names = {api.sse_event_name(cls) for cls in api.SSE_EVENTS}
    assert names == {*LOGGED_EVENTS, "state", "heartbeat"} == set(DATA)
    assert set(LOGGED_EVENTS) == {"stage_update", "progress", "message", "cost_update", "preview", "completed", "error"}
    event = api.decode_sse("cost_update", b'{"stage":"composer","cost":0.01,"total":0.25}', "1700000000000-3")
    assert isinstance(event, api.CostUpdateEvent) and event.data.total == 0.25
    with pytest.raises(msgspec.ValidationError):
        api.decode_sse("completed", b'{"video_url":null,"total_cost":1}', "1-0")
    with pytest.raises(msgspec.ValidationError):
        api.decode_sse("error", b'{"error":"x","code":"FAILED","retryable":false}', "1-0")  # not in the catalogue


def test_orchestrator_job_bodies_are_the_documented_structs() -> None:
    """The orchestrator's bodies are the Structs; on the wire they decode strictly as them."""
    snap = {
        "job_id": "6f1c2b4e-9a57-4d1f-8a3e-2f0b5c7d9e11",
        "status": "processing",
        "current_stage": "video_generator",
        "progress": 40,
        "total_cost": Decimal("0.012500"),
        "error_message": None,
        "created_at": "2024-06-11T10:00:00.123Z",  # as every time is written (api.timestamp)
        "updated_at": "2024-06-11T10:01:00.000Z",
        "completed_at": None,
    }
    body = _wire.encode(status_body(snap, None))
    assert msgspec.json.decode(body, type=api.Job).estimated_remaining > 0
    row = {**snap, "created_at": datetime(2024, 6, 11, 10, tzinfo=UTC), "completed_at": None}
    item = _wire.encode(list_item(row))
    assert msgspec.json.decode(item, type=api.JobListItem).completed_at is None


async def test_the_served_document_is_the_generated_one(gw: Any) -> None:
    resp = await gw.get("/api/v1/openapi.json")
    assert resp.status == 200 and resp.headers["X-Request-ID"]
    assert await resp.json() == msgspec.json.decode(msgspec.json.encode(document(development=True)))
    page = await gw.get("/api/v1/docs")
    text = await page.text()
    assert page.status == 200 and "stream-ticket" in text and "cost_update" in text
