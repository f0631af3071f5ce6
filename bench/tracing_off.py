"""What tracing costs when it is off: the code it adds per stream message, timed alone.

    .venv/bin/python bench/tracing_off.py [--n 200000] [--repeat 7]

Per message the services now call ``tracing.span(...)`` (with its attributes) and
``tracing.traceparent()`` beside what they did before (build and encode the message). With tracing
off (no ``OTEL_*`` variable, as here) this compares, best of ``--repeat``, µs per message:

- a ``StageTask`` built and encoded as before;
- the same inside ``tracing.span`` with the worker's attributes and ``traceparent=tracing.traceparent()``.

The bytes are the same (checked); the difference is the whole cost of tracing being off.
"""

from __future__ import annotations

import argparse
import timeit

from montage_common import tracing
from montage_contracts.messages import StageTask, encode
from montage_contracts.models import AudioParserInput

INPUT = AudioParserInput(audio_key="audio/u/j/song.mp3")


def before() -> bytes:
    return encode(StageTask(job_id="j", user_id="u", stage="audio_parser", input=INPUT, dispatch=1))


def after() -> bytes:
    attributes = {"montage.job_id": "j", "montage.stage": "audio_parser", "montage.attempt": 1}
    attributes |= {"montage.dispatch": 1, "montage.deliveries": 1}
    with tracing.span("stage audio_parser", parent=None, kind=tracing.SpanKind.CONSUMER, attributes=attributes):
        task = StageTask(
            job_id="j", user_id="u", stage="audio_parser", input=INPUT, dispatch=1, traceparent=tracing.traceparent()
        )
        return encode(task)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    assert not tracing.enabled(), "run without OTEL_* variables: this measures tracing off"
    assert before() == after()
    rows = {}
    for name, fn in (("before", before), ("after", after), ("before again", before)):
        best = min(timeit.repeat(fn, number=args.n, repeat=args.repeat)) / args.n * 1e6
        rows[name] = best
        print(f"{name}: {best:.2f} µs per message", flush=True)
    base = min(rows["before"], rows["before again"])
    print(f"tracing off adds {rows['after'] - base:.2f} µs per message ({rows['after'] / base:.2f}x)")


if __name__ == "__main__":
    main()
