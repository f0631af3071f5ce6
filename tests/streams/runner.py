"""A consumer process for the stream runtime tests.

    python tests/streams/runner.py --url URL --namespace NS --stage in --group g --consumer a

It consumes ``stage:<stage>`` of the namespace with a :class:`StreamConsumer` and records what
it does in Redis so a test can check exactly-once downstream:

- ``{ns}:test:runs:<message_id>`` counts handler executions (a side effect outside the hand-off);
- ``{ns}:test:log`` gets one JSON line per execution (message id, consumer, attempt, time);
- the handler hands off one entry to ``stage:<out>`` (``--out``) carrying the same message id;
- the dead-letter hook hands off a failure result to the results stream.

The payload (JSON) says what the handler does: ``sleep`` seconds, on the first ``sleep_runs``
executions only (default every); ``fail`` = ``"retryable"`` or ``"fatal"``, on the first
``fail_runs`` executions only (default every). SIGTERM stops the consumer gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import Sequence

from montage_common.redis import create_redis
from montage_contracts.errors import PipelineError, RetryableError
from montage_contracts.keys import Keys
from montage_streams import DeadLetter, Delivery, Emit, RetryPolicy, StreamConsumer


def test_key(ns: str, *parts: str) -> str:
    return ":".join(["{" + ns + "}", "test", *parts])


async def main(args: argparse.Namespace) -> None:
    keys = Keys(args.namespace)
    redis = create_redis(args.url)
    out = keys.stage_stream(args.out)

    async def handler(d: Delivery) -> Sequence[Emit]:
        spec = json.loads(d.payload or b"{}")
        runs = int(await redis.incr(test_key(args.namespace, "runs", d.message_id)))
        record = {"mid": d.message_id, "consumer": args.consumer, "attempt": d.attempt, "t": time.time(),
                  "deliveries": d.delivery_count, "run": runs}  # fmt: skip
        await redis.rpush(test_key(args.namespace, "log"), json.dumps(record))
        if spec.get("sleep") and runs <= spec.get("sleep_runs", 1 << 30):
            await asyncio.sleep(float(spec["sleep"]))
        if spec.get("fail") and runs <= spec.get("fail_runs", 1 << 30):
            raise (RetryableError if spec["fail"] == "retryable" else PipelineError)(f"failing run {runs}")
        body = {"mid": d.message_id, "consumer": args.consumer, "attempt": d.attempt, "deliveries": d.delivery_count}
        return [Emit(out, json.dumps(body).encode(), message_id=d.message_id)]

    def dead(d: Delivery, dl: DeadLetter) -> Sequence[Emit]:
        body = {"mid": d.message_id, "code": dl.code, "attempts": dl.attempts}
        return [Emit(keys.results_stream(), json.dumps(body).encode(), message_id=d.message_id)]

    consumer = StreamConsumer(
        redis,
        keys.stage_stream(args.stage),
        args.group,
        handler,
        keys,
        consumer=args.consumer,
        concurrency=args.concurrency,
        block_ms=200,
        claim_idle_ms=args.claim_idle_ms,
        retry=RetryPolicy(tuple(float(x) for x in args.backoff.split(",") if x)),
        grace=args.grace,
        on_dead_letter=dead,
        read_ahead=args.read_ahead,
        read_ahead_wait=args.read_ahead_wait,
    )

    loop = asyncio.get_running_loop()
    marks: list[asyncio.Task[object]] = []

    def on_term() -> None:
        consumer.stop()
        marks.append(loop.create_task(redis.set(test_key(args.namespace, "stopping", args.consumer), 1)))

    loop.add_signal_handler(signal.SIGTERM, on_term)
    task = asyncio.create_task(consumer.run())
    await consumer.started.wait()
    await redis.set(test_key(args.namespace, "ready", args.consumer), 1)
    await task
    await asyncio.gather(*marks)
    await redis.set(test_key(args.namespace, "exited", args.consumer), 1)
    await redis.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--stage", default="in")
    p.add_argument("--out", default="out")
    p.add_argument("--group", default="g")
    p.add_argument("--consumer", required=True)
    p.add_argument("--concurrency", type=int, default=3)
    p.add_argument("--claim-idle-ms", type=int, default=500)
    p.add_argument("--backoff", default="0.2,0.4,0.8")
    p.add_argument("--grace", type=float, default=1.0)
    p.add_argument("--read-ahead", type=int, default=StreamConsumer.read_ahead)
    p.add_argument("--read-ahead-wait", type=float, default=StreamConsumer.read_ahead_wait)
    asyncio.run(main(p.parse_args()))
