"""DEVELOPMENT STAND-IN for an OpenTelemetry collector's OTLP/HTTP trace receiver — not a collector.

    python -m montage_dev.fakes.otlp --port 4318 [--quiet]   # prints one JSON line per span received

- ``POST /v1/traces``: an ``ExportTraceServiceRequest`` (protobuf, optionally gzip), as the SDK's
  OTLP/HTTP exporter sends it (``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318``); answers an
  empty ``ExportTraceServiceResponse``. Each span is kept as a :class:`ReceivedSpan`.
- ``GET /_spans``: what was received, as JSON; ``GET /_stats``: how many requests and spans;
  ``POST /_reset`` forgets it.

Importable too: :func:`create_app` returns the application and its :class:`Received` state, and
:class:`ReceiverThread` runs one on a free port in a thread of its own (for a synchronous fixture
whose stack outlives each test's event loop, and for the benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import socket
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_EMPTY = ExportTraceServiceResponse().SerializeToString()
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    trace_id: str  # hex, as the backends show it
    span_id: str
    parent_id: str  # "" for a root span
    kind: str  # KINDS
    attributes: dict[str, Any]
    error: bool  # status ERROR
    start_ns: int
    end_ns: int


@dataclass
class Received:
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    count: int = 0  # spans received (also when not kept)
    keep: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def reset(self) -> None:
        with self.lock:
            self.spans.clear()


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which is None or which == "kvlist_value" or which == "bytes_value":
        return None
    return getattr(v, which)


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out: list[ReceivedSpan] = []
    for rs in request.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        service = str(resource.get("service.name", ""))
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        service=service,
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        kind=KINDS.get(s.kind, str(s.kind)),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        error=s.status.code == 2,  # STATUS_CODE_ERROR
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return out


def create_app(received: Received | None = None, *, echo: bool = False) -> tuple[web.Application, Received]:
    state = received or Received()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        if not state.keep:  # count only: parse, build nothing (the benchmarks' receiver stays cheap)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with state.lock:
                state.requests += 1
                state.count += n
            return web.Response(body=_EMPTY, content_type="application/x-protobuf")
        spans = decode(body)
        with state.lock:
            state.spans.extend(spans)
            state.requests += 1
            state.count += len(spans)
        if echo:
            for s in spans:
                print(json.dumps(asdict(s), default=str), flush=True)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def spans(_: web.Request) -> web.Response:
        return web.json_response([asdict(s) for s in state.snapshot()])

    async def stats(_: web.Request) -> web.Response:
        with state.lock:
            return web.json_response({"requests": state.requests, "spans": state.count})

    async def reset(_: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/_spans", spans)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    return app, state


class ReceiverThread:
    """A receiver on 127.0.0.1 and a free port, served by a thread of its own until :meth:`stop`."""

    def __init__(self) -> None:
        self.received = Received()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name="otlp-receiver", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app, _ = create_app(self.received)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> ReceiverThread:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the OTLP receiver did not start")
        return self

    def spans(self) -> list[ReceivedSpan]:
        return self.received.snapshot()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def __enter__(self) -> ReceiverThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="montage_dev.fakes.otlp", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--quiet", action="store_true", help="print nothing and keep no spans: only count them")
    args = parser.parse_args(argv)
    app, _ = create_app(Received(keep=not args.quiet), echo=not args.quiet)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
