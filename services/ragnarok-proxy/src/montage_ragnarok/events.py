"""The final-status event pushed to ``Keys.ragnarok_events_stream()``.

Each entry has one field, ``data``: the JSON of :class:`~montage_contracts.messages.RagnarokJobFinished`
(``{"type": "ragnarok_job_finished", "job_id", "user_id", "workflow_id", "status", "video_url",
"cost_usd", "quality_score", "error", "trace_id", "finished_at"}``, ``cost_usd`` a JSON number).
Delivery is at least once: a replica that dies between storing a final status and publishing
leaves the job due, and whoever claims it next publishes; consumers dedupe on ``job_id``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from montage_contracts.keys import Keys
from montage_contracts.messages import RagnarokJobFinished, encode
from redis.asyncio import Redis

from montage_ragnarok.metrics import EVENTS
from montage_ragnarok.store import Job

FIELD = b"data"


class EventPublisher:
    def __init__(self, redis: Redis, keys: Keys, maxlen: int) -> None:
        self.redis = redis
        self.stream = keys.ragnarok_events_stream()
        self.maxlen = maxlen

    async def job_finished(self, job: Job) -> None:
        """XADD the job's final state."""
        event = RagnarokJobFinished(
            job_id=job.job_id,
            user_id=job.user_id,
            workflow_id=job.workflow_id,
            status=job.status,
            video_url=job.video_url,
            cost_usd=job.cost_usd,
            quality_score=job.quality_score,
            error=job.error,
            trace_id=job.trace_id,
            finished_at=job.completed_at or datetime.now(UTC),
        )
        await self.redis.xadd(self.stream, {FIELD: encode(event)}, maxlen=self.maxlen, approximate=True)
        EVENTS.labels(job.status).inc()
