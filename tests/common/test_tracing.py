"""Traces (``montage_common.tracing``): off by default and then nothing on the wire or in the logs;
on by the standard ``OTEL_*`` variables, the stream messages carry the W3C ``traceparent`` and the
reader's span continues the writer's trace.

Turning tracing on installs a global tracer provider and patches aiohttp, httpx, redis-py and
asyncpg for the whole process, so the "on" cases run in a child process of their own (with an
in-process OTLP/HTTP receiver, ``montage_dev.fakes.otlp``, here in the test's process).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import msgspec
import pytest
from montage_common import tracing
from montage_contracts.messages import StageProgress, StageResult, StageTask, encode, result_decoder, task_decoder
from montage_contracts.models import AudioParserInput
from montage_dev.fakes.otlp import ReceiverThread


def _task(**kw: object) -> StageTask:
    return StageTask(job_id="j1", user_id="u1", stage="audio_parser", input=AudioParserInput(audio_key="a"), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, []),  # no exporter: off
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_name_an_exporter(
    env: dict[str, str], wanted: list[str]
) -> None:
    assert tracing.exporters_wanted(env) == wanted


def test_setup_without_the_variables_leaves_tracing_off() -> None:
    assert tracing.setup("unit", env={}) is False
    assert not tracing.enabled()


def test_disabled_tracing_adds_nothing_to_messages_spans_or_logs() -> None:
    assert not tracing.enabled()
    assert tracing.traceparent() is msgspec.UNSET
    before = b'{"type":"task","job_id":"j1","user_id":"u1","stage":"audio_parser"'
    wire = encode(_task(traceparent=tracing.traceparent()))
    assert wire.startswith(before) and b"traceparent" not in wire
    assert wire == encode(_task())  # exactly the bytes of a message written before tracing existed
    result = StageResult(job_id="j1", stage="audio_parser", ok=True, traceparent=tracing.traceparent())
    assert b"traceparent" not in encode(result)
    with tracing.span("nothing", parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01", attributes={"a": 1}) as s:
        assert not s.is_recording()
        assert not s.get_span_context().is_valid
        assert tracing.traceparent() is msgspec.UNSET
        event = tracing.add_trace_ids(None, "info", {"event": "x"})
    assert event == {"event": "x"}


def test_messages_of_an_older_release_and_with_a_traceparent_both_decode() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert task_decoder.decode(encode(_task())).traceparent is msgspec.UNSET
    assert task_decoder.decode(encode(_task(traceparent=parent))).traceparent == parent
    progress = StageProgress(job_id="j1", stage="s", text="t", traceparent=parent)
    assert result_decoder.decode(encode(progress)) == progress


CHILD = textwrap.dedent(
    """
    import json, logging, sys
    import structlog
    from montage_common import logs, tracing
    from montage_common.settings import CommonSettings
    from montage_contracts.messages import StageTask, encode, task_decoder
    from montage_contracts.models import AudioParserInput

    logs.configure(CommonSettings(log_format="json"), "unit")
    assert tracing.setup("unit") and tracing.enabled()
    log = structlog.get_logger()
    out = {}
    with tracing.span("orchestrator dispatch", attributes={"montage.job_id": "j1"}) as writer:
        task = StageTask(job_id="j1", user_id="u", stage="audio_parser", input=AudioParserInput(audio_key="a"),
                         traceparent=tracing.traceparent())
        out["wire"] = encode(task).decode()
        out["writer"] = [format(writer.get_span_context().trace_id, "032x"), format(writer.get_span_context().span_id, "016x")]
    read = task_decoder.decode(encode(task))
    try:
        with tracing.span("stage audio_parser", parent=read.traceparent, kind=tracing.SpanKind.CONSUMER,
                          attributes={"montage.job_id": "j1", "montage.stage": "audio_parser", "montage.attempt": 2}):
            log.info("inside_the_stage")
            raise RuntimeError("the stage broke")
    except RuntimeError:
        pass
    log.info("outside_any_span")
    tracing.shutdown()
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def test_a_stream_message_carries_the_writers_context_and_the_reader_continues_it() -> None:
    with ReceiverThread() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        spans = receiver.spans()
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    trace_id, writer_id = out["writer"]
    wire = json.loads(out["wire"])
    # W3C: version, trace id, parent id, flags (sampled; the SDK also sets Level 2's "random" bit)
    assert re.fullmatch(f"00-{trace_id}-{writer_id}-0[13]", wire["traceparent"]), wire
    by_name = {s.name: s for s in spans}
    writer, reader = by_name["orchestrator dispatch"], by_name["stage audio_parser"]
    assert writer.service == reader.service == "montage-unit"
    assert (writer.trace_id, writer.span_id, writer.parent_id) == (trace_id, writer_id, "")
    assert (reader.trace_id, reader.parent_id, reader.kind) == (trace_id, writer_id, "consumer")
    assert reader.attributes == {"montage.job_id": "j1", "montage.stage": "audio_parser", "montage.attempt": 2}
    assert reader.error and not writer.error  # the exception is recorded on the span it left
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    inside = next(e for e in lines if e["event"] == "inside_the_stage")
    assert inside["trace_id"] == trace_id and inside["span_id"] == reader.span_id
    outside = next(e for e in lines if e["event"] == "outside_any_span")
    assert "trace_id" not in outside and "span_id" not in outside


ORPHANS = textwrap.dedent(
    """
    from opentelemetry import trace
    from montage_common import tracing
    assert tracing.setup("unit")
    t = trace.get_tracer("unit")
    with t.start_as_current_span("redis poll", kind=trace.SpanKind.CLIENT) as orphan:
        assert not orphan.is_recording()  # a client span with no parent: not recorded
    with t.start_as_current_span("request", kind=trace.SpanKind.SERVER):
        with t.start_as_current_span("redis call", kind=trace.SpanKind.CLIENT) as child:
            assert child.is_recording()  # inside a request: recorded
    tracing.shutdown()
    """
)


def test_client_spans_without_a_parent_are_not_recorded() -> None:
    with ReceiverThread() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        proc = subprocess.run([sys.executable, "-c", ORPHANS], env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        names = sorted(s.name for s in receiver.spans())
    assert names == ["redis call", "request"]


def test_instrumentations_honour_the_standard_disabled_list() -> None:
    assert tracing.instrumentations({}) == ["aiohttp-server", "aiohttp-client", "httpx", "redis", "asyncpg"]
    off = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "redis, asyncpg"}
    assert tracing.instrumentations(off) == ["aiohttp-server", "aiohttp-client", "httpx"]
