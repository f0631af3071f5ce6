"""Every Redis key, stream, consumer group and channel name, built in one place.

Keys that one Lua script or MULTI touches together share the hash tag ``{<namespace>}``
so the pipeline also runs on Redis Cluster (they then live in one slot). Per-user and
per-token keys carry no tag: they are only ever touched one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

ORCHESTRATOR_GROUP = "orchestrator"


@dataclass(frozen=True, slots=True)
class Keys:
    """Name builder bound to one namespace (``REDIS_NAMESPACE``)."""

    namespace: str = "montage"

    @property
    def tag(self) -> str:
        return "{" + self.namespace + "}"

    # --- pipeline streams (hash-tagged) --------------------------------------
    def stage_stream(self, stage: str) -> str:
        return f"{self.tag}:stage:{stage}"

    def results_stream(self) -> str:
        return f"{self.tag}:results"

    def ragnarok_events_stream(self) -> str:
        return f"{self.tag}:ragnarok:events"

    def dead_letter_stream(self, stream: str) -> str:
        return f"{stream}:dead"

    def delayed_zset(self) -> str:
        """Retries waiting for their backoff, shared by every stream of the namespace."""
        return f"{self.tag}:delayed"

    def job_events_stream(self, job_id: str) -> str:
        """Durable per-job event log (SSE replay with Last-Event-ID)."""
        return f"{self.tag}:job_events:{job_id}"

    def job_events_channel(self, job_id: str) -> str:
        """Pub/sub channel carrying each event live (spec: ``job_events:{job_id}``)."""
        return f"{self.namespace}:job_events:{job_id}"

    def stage_group(self, stage: str) -> str:
        return stage

    # --- job state ------------------------------------------------------------
    def job_cancel(self, job_id: str) -> str:
        return f"{self.namespace}:job_cancel:{job_id}"

    def job_status_cache(self, job_id: str) -> str:
        return f"{self.namespace}:job_status:{job_id}"

    # --- gateway --------------------------------------------------------------
    def rate_limit(self, user_id: str) -> str:
        return f"{self.namespace}:rate_limit:{user_id}"

    def request_guard(self, who: str) -> str:
        return f"{self.namespace}:req_guard:{who}"

    def jwt_valid(self, token_hash: str) -> str:
        return f"{self.namespace}:jwt_valid:{token_hash}"

    def stream_ticket(self, ticket: str) -> str:
        return f"{self.namespace}:sse_ticket:{ticket}"

    def sse_user_connections(self, user_id: str) -> str:
        return f"{self.namespace}:sse_conns:{user_id}"

    def sse_job_connections(self, job_id: str) -> str:
        """Open SSE connections of one job across gateway replicas (sorted set of leases)."""
        return f"{self.namespace}:sse_job_conns:{job_id}"

    # --- leases / liveness ----------------------------------------------------
    def lease(self, name: str) -> str:
        """A named lease (sweepers, cleanup) held by one replica at a time."""
        return f"{self.namespace}:lease:{name}"

    def worker_heartbeat(self, stage: str, consumer: str) -> str:
        return f"{self.namespace}:worker:{stage}:{consumer}"

    def worker_heartbeat_pattern(self) -> str:
        return f"{self.namespace}:worker:*"
