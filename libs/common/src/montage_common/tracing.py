"""OpenTelemetry traces: off by default, configured by the standard ``OTEL_*`` variables.

:func:`setup` is called once per process (each service's ``__main__``). Tracing is **on** when
``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or, when that is unset, when
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; it is off when
neither is, when ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``. Everything else is the
SDK's own reading of the standard variables: ``OTEL_SERVICE_NAME`` (default: the process's name,
e.g. ``montage-gateway``, ``montage-stage-composer``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` (default ``parentbased_always_on``),
``OTEL_EXPORTER_OTLP_HEADERS``/``_TIMEOUT``/``_COMPRESSION``, ``OTEL_BSP_*`` (the batch processor),
``OTEL_PROPAGATORS`` (default W3C ``tracecontext,baggage``), ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``
(:func:`instrumentations`). The exporter is OTLP over HTTP with
protobuf (``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``, port 4318); ``grpc`` is refused at start.

Off, nothing is installed: the API's no-op tracer, :func:`span` is a bare context manager,
:func:`traceparent` returns ``UNSET`` (a message's ``traceparent`` field is then left out of its
bytes) and log lines get no ids.

On, the maintained instrumentations give the spans of the libraries: aiohttp server (every
API request; the ops port's ``/healthz``, ``/readyz``, ``/metrics`` excluded unless
``OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS`` says otherwise) and client (with W3C ``traceparent``
injected: gateway → orchestrator, workers → ragnarok-proxy), httpx and httpx2 (the ``openai``
SDK's provider calls, Supabase Storage), redis and asyncpg. A client span without a parent (a background loop's
Redis poll, a sweeper's query) is not recorded (:class:`NoOrphanClientSpans`), so traces are the
work of requests and jobs, not the polling between them. Across Redis Streams the context travels
inside the message (``traceparent`` of :mod:`montage_contracts.messages`): :func:`traceparent`
writes it, :func:`span` with ``parent=`` continues it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import msgspec
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

log = structlog.get_logger()

# Which parts of the ops port are never traced (the probes and scrapes), unless the standard
# variable of the aiohttp server instrumentation says otherwise.
OPS_PATHS_EXCLUDED = "^/healthz$,^/readyz$,^/metrics$"
TRACER_NAME = "montage"

__all__ = ["Span", "SpanKind", "add_trace_ids", "current", "enabled", "fail", "setup", "span", "traceparent"]

_state: dict[str, Any] = {"enabled": False, "provider": None}


def enabled() -> bool:
    """Whether :func:`setup` turned tracing on in this process."""
    return bool(_state["enabled"])


def exporters_wanted(env: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters the standard variables ask for; empty when tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:
        return [] if names == ["none"] else [n for n in names if n != "none"]
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


class NoOrphanClientSpans:
    """A sampler: a client span (Redis, Postgres, HTTP out) with no parent is dropped; everything
    else is decided by the configured sampler (``OTEL_TRACES_SAMPLER``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def should_sample(  # noqa: PLR0917
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Any] | None = None,
        trace_state: Any = None,
    ) -> Any:
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

        if kind == SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"NoOrphanClientSpans{{{self.inner.get_description()}}}"


def setup(service: str, env: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on for this process when the standard variables ask for it (see the module
    docstring); returns whether it is on. Call before the apps and clients are created."""
    if _state["enabled"]:
        return True
    wanted = exporters_wanted(env)
    if not wanted:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporters: list[SpanExporter] = []
    for name in wanted:
        if name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
            if protocol not in {"", "http/protobuf"}:
                raise SystemExit(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: Montage exports traces over OTLP/HTTP"
                    " (http/protobuf, port 4318) only"
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            raise SystemExit(f"OTEL_TRACES_EXPORTER={name}: Montage knows otlp, console and none")
    attributes: dict[str, str] = {"service.namespace": "montage"}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = f"montage-{service}"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.sampler = NoOrphanClientSpans(provider.sampler)  # type: ignore[assignment]
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _instrument(env)
    _state.update(enabled=True, provider=provider)
    log.info("tracing_enabled", exporters=wanted, sampler=provider.sampler.get_description())
    return True


INSTRUMENTATIONS = ("aiohttp-server", "aiohttp-client", "httpx", "redis", "asyncpg")


def instrumentations(env: Mapping[str, str] = os.environ) -> list[str]:
    """The instrumentations to install: all of :data:`INSTRUMENTATIONS` but those named in the
    standard ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (e.g. ``redis,asyncpg``: fewer, cheaper
    spans; the trace still links every service, since the propagation is Montage's own and HTTP's)."""
    off = {n.strip() for n in env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    return [n for n in INSTRUMENTATIONS if n not in off]


def _instrument(env: Mapping[str, str]) -> None:
    """The maintained instrumentations of the libraries Montage uses (those installed here)."""
    if "OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS" not in env and "OTEL_PYTHON_EXCLUDED_URLS" not in env:
        os.environ["OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS"] = OPS_PATHS_EXCLUDED
    wanted = instrumentations(env)
    if "aiohttp-server" in wanted:
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

        AioHttpServerInstrumentor().instrument()
    if "aiohttp-client" in wanted:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

        AioHttpClientInstrumentor().instrument()
    if "httpx" in wanted:
        from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor, HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument()  # Supabase Storage
        with contextlib.suppress(ModuleNotFoundError):  # the openai SDK's client (httpx2), in the workers
            HTTPX2ClientInstrumentor().instrument()
    if "redis" in wanted:
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument()
    if "asyncpg" in wanted:
        try:  # the [postgres] extra: the gateway and the workers have no asyncpg
            import asyncpg  # noqa: F401
        except ImportError:
            return
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]


def shutdown() -> None:
    """Export what is buffered and stop (also done at interpreter exit by the SDK)."""
    provider = _state["provider"]
    if provider is not None:
        provider.shutdown()


# --- context across Redis Streams --------------------------------------------------------------
def traceparent() -> str | msgspec.UnsetType:
    """The W3C ``traceparent`` of the current span, for a stream message; ``UNSET`` (the field is
    left out of the message) when tracing is off or no span is recording."""
    if not _state["enabled"]:
        return msgspec.UNSET
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", msgspec.UNSET)


def _context_of(parent: str | msgspec.UnsetType | None) -> otel_context.Context | None:
    if not parent:
        return None
    assert isinstance(parent, str)
    carrier: MutableMapping[str, str] = {"traceparent": parent}
    return propagate.extract(carrier)


_NO_SPAN: Span = INVALID_SPAN


_OFF: AbstractContextManager[Span] = nullcontext(_NO_SPAN)  # reusable: what span() is when off


def span(
    name: str,
    *,
    parent: str | msgspec.UnsetType | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span]:
    """A span of Montage's own work, current inside the block; a child of ``parent`` (a
    ``traceparent`` from a message or a job's row) when given, else of the current span.
    An exception leaving the block is recorded on it and sets its status to error. Off: a shared
    no-op context manager (no generator, no context change)."""
    if not _state["enabled"]:
        return _OFF
    return _span(name, parent, kind, attributes)


@contextmanager
def _span(
    name: str, parent: str | msgspec.UnsetType | None, kind: SpanKind, attributes: Mapping[str, Any] | None
) -> Iterator[Span]:
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, context=_context_of(parent), kind=kind, attributes=attributes) as s:
        yield s


def current() -> Span:
    """The current span (a no-op one when there is none)."""
    return trace.get_current_span()


def fail(s: Span, code: str, message: str) -> None:
    """Mark ``s`` failed without an exception (a stage's failed result, a job that fails)."""
    if s.is_recording():
        s.set_status(Status(StatusCode.ERROR, f"{code}: {message}"[:300]))
        s.set_attribute("montage.error_code", code)


# --- logs ---------------------------------------------------------------------------------------
def add_trace_ids(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: ``trace_id`` and ``span_id`` (hex, as the backends show them) on
    every line logged while a span is current; nothing when tracing is off."""
    if _state["enabled"]:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event.setdefault("trace_id", format(ctx.trace_id, "032x"))
            event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event
