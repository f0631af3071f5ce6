"""A provider failure inside a real stage worker (Redis Streams, the runtime's RetryPolicy): a
retryable one is retried on the schedule and, once the retries are spent, the stage's result is
a GENERATION_ERROR; a refusal is not retried."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from montage_common.storage import LocalStorage
from montage_contracts.errors import job_retryable
from montage_contracts.keys import Keys
from montage_contracts.messages import StageResult, StageTask, dispatch_message_id, encode, result_decoder
from montage_contracts.models import PromptGeneratorInput
from montage_stages.stages import scene_planner
from montage_stages.worker import StageWorker, WorkerSettings
from montage_streams import Emit, StreamProducer
from redis.asyncio import Redis

from tests.providers.conftest import Fake
from tests.providers.test_text import _audio

STAGE = "prompt_generator"


async def _run_task(redis: Redis, keys: Keys, worker: StageWorker) -> StageResult:
    job_id = str(uuid.uuid4())
    plan = scene_planner.local_plan("A lone dancer in a neon city at night", _audio())
    task = StageTask(
        job_id=job_id,
        user_id="u1",
        stage=STAGE,
        input=PromptGeneratorInput(plan=plan, fallback_mode=True),
        budget_remaining="50",
        cost_limit="50",
    )
    stream = keys.stage_stream(STAGE, keys.partition_of(job_id))
    await StreamProducer(redis).emit([Emit(stream, encode(task), message_id=dispatch_message_id(job_id, STAGE, 1))])
    running = asyncio.create_task(worker.run())
    try:
        results = keys.results_stream(keys.partition_of(job_id))
        for _ in range(600):  # liveness guard only: 60 s
            for _, fields in await redis.xrange(results):
                msg: Any = result_decoder.decode(fields[b"m"])
                if isinstance(msg, StageResult) and msg.job_id == job_id:
                    return msg
            await asyncio.sleep(0.1)
        raise AssertionError("no result")
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)


@pytest.fixture
def worker_for(redis: Redis, keys: Keys, fake: Fake, storage: LocalStorage) -> Any:
    def make() -> StageWorker:
        settings = WorkerSettings(
            redis_namespace=keys.namespace,
            llm_url=fake.url,
            llm_api_key="sk-test",
            retry_count=3,
            retry_base_seconds=0.1,  # 0.1 s, 0.2 s, 0.4 s
            stream_block_ms=100,
            shutdown_grace_seconds=1.0,
        )
        return StageWorker(settings, STAGE, redis, storage, keys, consumer="test-worker")

    return make


async def test_retried_then_it_answers(redis: Redis, keys: Keys, fake: Fake, worker_for: Any) -> None:
    await fake.control(mode="429", endpoints=["chat"], times=2)
    result = await _run_task(redis, keys, worker_for())
    assert result.ok and result.attempts == 3
    assert [r["outcome"] for r in fake.requests("chat")] == ["429", "429", "ok"]
    calls = [r["at"] for r in fake.requests("chat")]
    assert calls[1] - calls[0] >= 0.1 and calls[2] - calls[1] >= 0.2  # the schedule: 0.1 s, then 0.2 s
    assert "prompt_generator:llm" in {c.call_id.split("@")[0].split(":", 1)[1] for c in result.costs}


async def test_down_for_good_is_a_generation_error(redis: Redis, keys: Keys, fake: Fake, worker_for: Any) -> None:
    await fake.control(mode="500", endpoints=["chat"])
    result = await _run_task(redis, keys, worker_for())
    assert not result.ok and result.error is not None
    assert result.error.code == "GENERATION_ERROR" and "answered 500" in result.error.message
    assert result.attempts == 4 and len(fake.requests("chat")) == 4  # 1 + 3 retries, then dead-lettered


async def test_a_refusal_is_not_retried(redis: Redis, keys: Keys, fake: Fake, worker_for: Any) -> None:
    await fake.control(mode="refuse", endpoints=["chat"])
    result = await _run_task(redis, keys, worker_for())
    # not retried by the runtime, and the job's failure is not retryable either (VALIDATION_ERROR)
    assert not result.ok and result.error is not None and result.error.code == "VALIDATION_ERROR"
    assert not job_retryable(result.error.code) and "refused" in result.error.message
    assert result.attempts == 1 and len(fake.requests("chat")) == 1
    assert msgspec.json.decode(bytes(result.output)) is None
