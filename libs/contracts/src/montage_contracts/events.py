"""The events of a job, typed once: what the orchestrator logs, the gateway relays, clients read.

Each SSE event's ``data:`` is one payload Struct of :mod:`montage_contracts.api` (``StateData``,
``StageUpdateData``, …; the OpenAPI document describes them from there). This module is the
rest of the vocabulary:

- :data:`DATA` maps each event name (the SSE ``event:`` line) to its payload type, and
  :func:`event_name` a payload back to its name, so code passes payloads and never names them;
- the per-job event log (a Redis stream, :mod:`montage_common.events`) holds the *logged*
  events (:data:`LOGGED_EVENTS`: every event but ``state`` and ``heartbeat``, which the gateway
  makes per connection) as ``{"event": <name>, "data": <payload>}``: :func:`encode_event` writes
  one, :func:`decode_event` reads one back as a :class:`JobEvent`, its payload typed;
- :data:`FINAL_EVENTS`: the events that end a job's stream.

The bytes are the wire's: a payload is encoded by msgspec in its Struct's field order, so what
the orchestrator logs is what the gateway sends (``data:``) and what a client decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from montage_contracts import api

# The payload of each event, by its SSE name (from the documented events, so the two cannot differ).
DATA: Final[dict[str, type[msgspec.Struct]]] = {
    api.sse_event_name(cls): next(f.type for f in msgspec.structs.fields(cls) if f.name == "data")
    for cls in api.SSE_EVENTS
}
_NAMES: Final[dict[type[msgspec.Struct], str]] = {kind: name for name, kind in DATA.items()}

# Made per connection by the gateway, never logged.
STATE_EVENT: Final = "state"
HEARTBEAT_EVENT: Final = "heartbeat"
LOGGED_EVENTS: Final[tuple[str, ...]] = tuple(n for n in DATA if n not in (STATE_EVENT, HEARTBEAT_EVENT))
FINAL_EVENTS: Final[tuple[str, ...]] = (api.sse_event_name(api.CompletedEvent), api.sse_event_name(api.ErrorEvent))

# A logged event's payload.
EventData = (
    api.StageUpdateData
    | api.ProgressData
    | api.MessageData
    | api.CostUpdateData
    | api.PreviewData
    | api.CompletedData
    | api.ErrorData
)
# Any event's payload.
Payload = EventData | api.StateData | api.HeartbeatData


def event_name(data: msgspec.Struct) -> str:
    """The SSE ``event:`` name of a payload (``KeyError`` for a Struct that is no event's payload)."""
    return _NAMES[type(data)]


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One logged event of a job: its name and its typed payload."""

    event: str
    data: EventData

    @property
    def final(self) -> bool:
        return self.event in FINAL_EVENTS


class _Entry(msgspec.Struct, frozen=True):
    """A log entry as stored, its payload still JSON (decoded by its type once the name is known)."""

    event: str
    data: msgspec.Raw


class _Out(msgspec.Struct, frozen=True):
    event: str
    data: Any


_encoder = msgspec.json.Encoder(decimal_format="number")
_entry = msgspec.json.Decoder(_Entry)
_payload: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    name: msgspec.json.Decoder(kind) for name, kind in DATA.items()
}


def encode_event(data: EventData) -> bytes:
    """A log entry's bytes: ``{"event": <name>, "data": <payload>}``."""
    name = event_name(data)
    if name not in LOGGED_EVENTS:
        raise ValueError(f"{name} events are not logged")
    return _encoder.encode(_Out(name, data))


def decode_data(name: str, data: bytes) -> Payload:
    """The payload of an event ``name`` (``msgspec.ValidationError`` for a payload that is not one;
    ``KeyError`` for an unknown name)."""
    payload: Payload = _payload[name].decode(data)
    return payload


def decode_event(payload: bytes) -> JobEvent:
    """A log entry back as a :class:`JobEvent` (``msgspec.DecodeError`` if it is not one)."""
    entry = _entry.decode(payload)
    if entry.event not in LOGGED_EVENTS:
        raise msgspec.DecodeError(f"not a logged event: {entry.event!r}")
    data = decode_data(entry.event, entry.data)
    assert not isinstance(data, api.StateData | api.HeartbeatData)
    return JobEvent(entry.event, data)


def encode_data(data: msgspec.Struct) -> bytes:
    """A payload's JSON: the ``data:`` line of its SSE message."""
    return _encoder.encode(data)
