"""Every Redis key, stream, consumer group and channel name, built in one place.

Keys that one Lua script or MULTI touches together share a hash tag, so the pipeline also runs on
Redis Cluster (they then live in one slot). Per-user and per-token keys carry no tag: they are
only ever touched one at a time.

**Partitions** (``REDIS_PARTITIONS``, default 1). The pipeline is split into P partitions; a job
belongs to one (:meth:`Keys.partition_of`, a stable hash of its id) and every key its hand-offs
touch carries that partition's hash tag: each stage's stream, the results stream, the delayed
retries, the dead letters, the job's event log, its live-event channel and its liveness keys.
So one Lua script (emit the next task + the job's events, ack the result) never spans two slots.
With P = 1 the tag is ``{<namespace>}`` (the layout of a single Redis). With P > 1 each
partition's tag is chosen so that the partitions' slots are spread evenly over the 16 384 slots
(partition k lands in the k-th of P equal slot ranges), so a cluster whose primaries own equal
slot ranges (``redis-cli --cluster create``) gets the same number of partitions on each.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache

ORCHESTRATOR_GROUP = "orchestrator"
SLOTS = 16384


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def key_slot(key: str) -> int:
    """The Redis Cluster slot of ``key`` (CRC16/XMODEM of its hash tag, mod 16 384)."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc % SLOTS


@cache
def partition_tags(namespace: str, partitions: int) -> tuple[str, ...]:
    """The hash tag of each partition (see the module docstring)."""
    if partitions <= 1:
        return ("{" + namespace + "}",)
    tags: list[str] = []
    for k in range(partitions):
        low, high = k * SLOTS // partitions, (k + 1) * SLOTS // partitions
        for n in range(200_000):  # about `partitions` tries are expected per tag
            tag = "{" + f"{namespace}:p{k}:{n}" + "}"
            if low <= key_slot(tag) < high:
                tags.append(tag)
                break
        else:  # pragma: no cover - CRC16 covers every range long before
            raise RuntimeError(f"no hash tag for partition {k} of {partitions}")
    return tuple(tags)


@dataclass(frozen=True, slots=True)
class Keys:
    """Name builder bound to one namespace (``REDIS_NAMESPACE``) and partition count."""

    namespace: str = "montage"
    partitions: int = 1  # REDIS_PARTITIONS
    sharded_events: bool = False  # live events by SPUBLISH on the job's partition (Redis Cluster)

    @property
    def tag(self) -> str:
        """The hash tag of partition 0 (the only one when ``partitions`` is 1)."""
        return self.partition_tag(0)

    def partition_tag(self, partition: int) -> str:
        return partition_tags(self.namespace, max(self.partitions, 1))[partition]

    def partition_of(self, job_id: str) -> int:
        """The partition a job belongs to (stable: a hash of its id)."""
        if self.partitions <= 1:
            return 0
        return zlib.crc32(job_id.encode()) % self.partitions

    @property
    def all_partitions(self) -> range:
        return range(max(self.partitions, 1))

    @staticmethod
    def tag_of(key: str) -> str:
        """The hash tag a key starts with (``""`` when it has none)."""
        if key.startswith("{") and (end := key.find("}")) > 0:
            return key[: end + 1]
        return ""

    # --- pipeline streams (hash-tagged by partition) -----------------------------------
    def stage_stream(self, stage: str, partition: int = 0) -> str:
        return f"{self.partition_tag(partition)}:stage:{stage}"

    def stage_streams(self, stage: str) -> list[str]:
        """The stream of ``stage`` in every partition."""
        return [self.stage_stream(stage, p) for p in self.all_partitions]

    def results_stream(self, partition: int = 0) -> str:
        return f"{self.partition_tag(partition)}:results"

    def results_streams(self) -> list[str]:
        return [self.results_stream(p) for p in self.all_partitions]

    def ragnarok_events_stream(self) -> str:
        return f"{self.tag}:ragnarok:events"

    def dead_letter_stream(self, stream: str) -> str:
        return f"{stream}:dead"

    def delayed_zset(self, stream: str = "") -> str:
        """Retries waiting for their backoff: one set per hash tag (``stream``'s; partition 0's by default)."""
        return f"{self.tag_of(stream) or self.tag}:delayed"

    def delayed_zsets(self) -> list[str]:
        return [f"{self.partition_tag(p)}:delayed" for p in self.all_partitions]

    def job_events_stream(self, job_id: str) -> str:
        """Durable per-job event log (SSE replay with Last-Event-ID), in the job's partition."""
        return f"{self.partition_tag(self.partition_of(job_id))}:job_events:{job_id}"

    def job_events_channel(self, job_id: str) -> str:
        """Channel carrying each event live (spec: ``job_events:{job_id}``).

        With sharded events (Redis Cluster) it is a shard channel with the job's partition tag, so
        the hand-off script can ``SPUBLISH`` it and only the node owning the slot carries it.
        """
        if self.sharded_events:
            return f"{self.partition_tag(self.partition_of(job_id))}:job_events:{job_id}"
        return f"{self.namespace}:job_events:{job_id}"

    # --- one user's events (``GET /api/v1/events``) ---------------------------------------
    def user_tag(self, user_id: str) -> str:
        """The hash tag of every key of one user's event log: ``{<namespace>:user:<id>}``, so the
        relay's script (append + cursor + publish) runs in one slot, and users spread over a cluster."""
        return "{" + f"{self.namespace}:user:{user_id}" + "}"

    def user_events_stream(self, user_id: str) -> str:
        """Every job event of the user, copied from the jobs' logs (``montage_common.user_events``)."""
        return f"{self.user_tag(user_id)}:events"

    def user_event_cursors(self, user_id: str) -> str:
        """Hash: job id → the last entry of that job's log copied to the user's log."""
        return f"{self.user_tag(user_id)}:event_cursors"

    def user_events_channel(self, user_id: str) -> str:
        """Live copy of each appended user event (a shard channel in the user's slot on a cluster)."""
        return f"{self.user_tag(user_id)}:events:live"

    def stage_group(self, stage: str) -> str:
        return stage

    # --- video_generator's clips (one job's clips fanned out over the stage's workers) ---------
    def clip_stream(self, partition: int = 0) -> str:
        """Clip entries of the jobs of ``partition``: one per clip to render, read by every
        video_generator process in :meth:`clip_group`."""
        return f"{self.partition_tag(partition)}:clips"

    def clip_streams(self) -> list[str]:
        return [self.clip_stream(p) for p in self.all_partitions]

    def clip_group(self) -> str:
        return "clips"

    def clip_records(self, job_id: str) -> str:
        """What became of a job's clip entries (one record per rendered entry), in the job's partition."""
        return f"{self.partition_tag(self.partition_of(job_id))}:clip_records:{job_id}"

    def clip_dispatched(self, job_id: str) -> str:
        """The clip entries already added for a job (a set of their signatures)."""
        return f"{self.partition_tag(self.partition_of(job_id))}:clip_dispatched:{job_id}"

    # --- job state ------------------------------------------------------------
    def job_cancel(self, job_id: str) -> str:
        return f"{self.namespace}:job_cancel:{job_id}"

    def job_status_cache(self, job_id: str) -> str:
        return f"{self.namespace}:job_status:{job_id}"

    def job_budget(self, job_id: str) -> str:
        """The job's budget ledger (reservations and settled costs, ``montage_common.budget``), in
        its partition, so a job's clips reserve against one key whichever worker renders them."""
        return f"{self.partition_tag(self.partition_of(job_id))}:budget:{job_id}"

    def stage_alive(self, job_id: str, stage: str) -> str:
        """A worker's liveness for one job's stage while it runs it (value: the dispatch number)."""
        return f"{self.partition_tag(self.partition_of(job_id))}:alive:{job_id}:{stage}"

    def stage_fault(self, job_id: str, stage: str) -> str:
        """Development only: the next attempt of this job's stage fails (``montage_stages.faults``)."""
        return f"{self.partition_tag(self.partition_of(job_id))}:fault:{job_id}:{stage}"

    # --- generation providers, shared by every worker and replica ----------------
    def provider_slots(self, provider: str) -> str:
        """The calls in flight at ``provider`` (a sorted set: one member per slot, scored by its
        lease's expiry), capped by ``PROVIDER_MAX_CONCURRENCY``; one hash tag with its backoff."""
        return "{" + f"{self.namespace}:provider:{provider}" + "}:slots"

    def provider_backoff(self, provider: str) -> str:
        """Set (with its expiry) when ``provider`` answered 429: no worker calls it until it expires."""
        return "{" + f"{self.namespace}:provider:{provider}" + "}:backoff"

    def provider_status(self) -> str:
        """Each stage's configured provider and its last success and failure (a hash: stage -> JSON),
        written by the stage workers, read by the gateway's health and the operator console."""
        return f"{self.namespace}:provider_status"

    # --- gateway --------------------------------------------------------------
    def rate_limit(self, user_id: str) -> str:
        return f"{self.namespace}:rate_limit:{user_id}"

    def idempotency(self, user_id: str, key_hash: str) -> str:
        """An upload's ``Idempotency-Key`` of one user (its SHA-256): in flight, or its first answer."""
        return f"{self.namespace}:idempotency:{user_id}:{key_hash}"

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
