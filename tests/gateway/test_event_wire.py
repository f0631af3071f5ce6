"""The SSE wire is byte for byte what it was when events were dicts.

Before the payloads were typed, the orchestrator logged ``{"event": <name>, "data": <dict>}``
(money as ``Decimal``, encoded as JSON numbers) and the gateway decoded each entry to a dict and
rendered it again (so money reached clients as floats). Each case below is one event as the
orchestrator builds it now (a Struct) beside the dict it used to build; the client must receive
the same bytes, relayed from the log, and the log entry must decode as before.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest
from montage_contracts import api
from montage_contracts.errors import ErrorCode
from montage_contracts.events import EventData, decode_event, encode_event, event_name
from montage_contracts.pipeline import JobStatus, StageUpdate
from montage_gateway.hub import render
from montage_gateway.sse import rebuilt_final

_old = msgspec.json.Encoder(decimal_format="number")

CASES: list[tuple[EventData, str, dict[str, Any]]] = [
    (
        api.StageUpdateData(stage="audio_parser", status=StageUpdate.STARTED),
        "stage_update",
        {"stage": "audio_parser", "status": "started"},
    ),
    (
        api.StageUpdateData(stage="composer", status=StageUpdate.COMPLETED, duration=round(3.14159, 3)),
        "stage_update",
        {"stage": "composer", "status": "completed", "duration": 3.142},
    ),
    (api.ProgressData(progress=40, estimated_remaining=95), "progress", {"progress": 40, "estimated_remaining": 95}),
    (
        api.MessageData(text="Rendering the clips", stage="video_generator"),
        "message",
        {"text": "Rendering the clips", "stage": "video_generator"},
    ),
    (
        api.CostUpdateData(stage="video_generator", cost=float(Decimal("0.0125")), total=float(Decimal("0.612500"))),
        "cost_update",
        {"stage": "video_generator", "cost": Decimal("0.0125"), "total": Decimal("0.612500")},
    ),
    (
        api.CompletedData(video_url="http://v/x.mp4?sig=1", total_cost=float(Decimal("1.250000"))),
        "completed",
        {"video_url": "http://v/x.mp4?sig=1", "total_cost": Decimal("1.250000")},
    ),
    (
        api.ErrorData(error="Job cancelled by user", code=ErrorCode.CANCELLED, retryable=False),
        "error",
        {"error": "Job cancelled by user", "code": "CANCELLED", "retryable": False},
    ),
]


def _old_relay(name: str, data: dict[str, Any], entry_id: str) -> bytes:
    """What the gateway sent for an old log entry: decoded to a dict, encoded again."""
    logged = _old.encode({"event": name, "data": data})
    relayed = msgspec.json.decode(logged)["data"]
    return f"event: {name}\nid: {entry_id}\n".encode() + b"data: " + _old.encode(relayed) + b"\n\n"


@pytest.mark.parametrize(("payload", "name", "old"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_relayed_events_are_the_old_bytes(payload: EventData, name: str, old: dict[str, Any]) -> None:
    assert event_name(payload) == name
    entry = encode_event(payload)
    # the gateway reads the log entry back (typed) and renders it: the bytes the client got before
    assert render(decode_event(entry).data, "1700000000000-7") == _old_relay(name, old, "1700000000000-7")
    # and an entry logged before the change still decodes, as the same payload
    assert decode_event(_old.encode({"event": name, "data": old})).data == payload


def test_state_is_the_old_bytes() -> None:
    body = {  # the orchestrator's job body (api.Job), money as the old handler wrote it
        "job_id": "6f1c2b4e-9a57-4d1f-8a3e-2f0b5c7d9e11",
        "status": "failed",
        "current_stage": "video_generator",
        "progress": 40,
        "estimated_remaining": 0,
        "total_cost": Decimal("0.250000"),
        "video_url": None,
        "error_message": "Job exceeded 15-minute timeout",
        "error_code": "TIMEOUT",
        "retryable": True,
        "created_at": "2026-01-01T12:00:00.000Z",
        "updated_at": "2026-01-01T12:15:00.000Z",
        "queue_position": None,
        "estimated_start": None,
        "poster_url": None,  # added with previews (issue #25): the state carries it as the job body does
    }
    wire = _old.encode(body)
    fields = list(msgspec.structs.fields(api.StateData))
    old_state = {f.name: msgspec.json.decode(wire)[f.name] for f in fields}
    old = b"event: state\nid: 5-0\ndata: " + _old.encode(old_state) + b"\n\n"
    state = msgspec.json.decode(wire, type=api.StateData)
    assert render(state, "5-0") == old


@pytest.mark.parametrize(("code", "retryable"), [("TIMEOUT", True), ("GENERATION_ERROR", True), ("CANCELLED", False)])
def test_a_rebuilt_error_carries_the_jobs_retryable(code: str, retryable: bool) -> None:
    """The fix: a final ``error`` rebuilt from Postgres said ``retryable: false`` whatever the failure."""
    state = api.StateData(
        job_id="j",
        status=JobStatus.FAILED,
        current_stage="video_generator",
        progress=40,
        estimated_remaining=0,
        total_cost=0.25,
        video_url=None,
        error_message="boom",
        error_code=code,
    )
    frame = rebuilt_final(state, "1700000000000-3")
    head, _, data = frame.partition(b"data: ")
    assert head == f"event: error\nid: 1700000000000-{2**64 - 1}\n".encode()
    assert msgspec.json.decode(data) == {"error": "boom", "code": code, "retryable": retryable}
