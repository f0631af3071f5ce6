"""Fault injection for tests: make one stage of one job fail, on the real stack (development only).

A test that needs a stage to fail where nothing real would fail (``composer``, to retry a job that
already paid for every clip) sets ``keys.stage_fault(job_id, stage)`` in Redis; the worker that
takes that job's task of that stage removes the key and fails the task with a non-retryable
``PipelineError`` carrying the key's text, as if the stage itself had failed. Only one attempt
fails (the key is taken with ``GETDEL``), so a later job — a retry — runs normally.

Honoured only when ``FAULT_INJECTION=true`` and ``ENVIRONMENT=development``: a production worker
never reads the key.
"""

from __future__ import annotations

from montage_contracts.errors import PipelineError
from montage_contracts.keys import Keys
from redis.asyncio import Redis

from montage_stages.runtime.settings import StageSettings


def enabled(settings: StageSettings) -> bool:
    return settings.fault_injection and settings.environment == "development"


async def raise_injected(redis: Redis, keys: Keys, job_id: str, stage: str) -> None:
    """Fail this task if a fault was injected for the job's stage (and consume the fault)."""
    text = await redis.getdel(keys.stage_fault(job_id, stage))
    if text is not None:
        message = text.decode() if isinstance(text, bytes) else str(text)
        raise PipelineError(f"injected fault: {message}", job_id=job_id)
