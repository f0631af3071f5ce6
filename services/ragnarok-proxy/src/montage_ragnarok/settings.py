"""Settings of the ragnarok-proxy, read once in ``main()`` (see ``montage_common.settings``)."""

from __future__ import annotations

from typing import Annotated

from montage_common.settings import CommonSettings
from msgspec import Meta


class ProxySettings(CommonSettings, frozen=True, kw_only=True):
    """Environment: the upper-cased field names (``RAGNAROK_URL``, ``POLL_INTERVAL_SECONDS`` …)."""

    port: int = 8082
    ops_port: int = 9082
    ragnarok_url: Annotated[str, Meta(description="the RAGNAROK service (make up starts a stand-in when unset)")] = (
        "http://127.0.0.1:8001"
    )
    ragnarok_api_key: Annotated[str, Meta(description="Sent as ``Authorization: Bearer …`` to RAGNAROK when set.")] = ""
    ragnarok_timeout_seconds: Annotated[
        float,
        Meta(description="Total time allowed for one RAGNAROK call (submit or status); past it the client gets 504."),
    ] = 10.0
    ragnarok_connect_timeout_seconds: Annotated[float, Meta(description="connect timeout of RAGNAROK calls")] = 3.0
    trinity_url: Annotated[
        str, Meta(description="Empty: no Trinity; enriched jobs go ahead with the enrichment marked unavailable.")
    ] = ""
    trinity_timeout_seconds: Annotated[
        float, Meta(description="Trinity enrichment timeout (then the job goes ahead without it)")
    ] = 5.0
    poll_interval_seconds: Annotated[
        float,
        Meta(
            description="first poll of a workflow after this; while its status does not change (or RAGNAROK fails) the interval grows by POLL_BACKOFF_FACTOR up to POLL_MAX_INTERVAL_SECONDS"
        ),
    ] = 2.0
    poll_backoff_factor: Annotated[
        float, Meta(description="growth of the polling interval while a workflow is unchanged")
    ] = 1.5
    poll_max_interval_seconds: Annotated[float, Meta(description="longest polling interval")] = 30.0
    poll_tick_seconds: Annotated[float, Meta(description="how often an idle replica looks for due jobs")] = 0.5
    poll_batch_size: Annotated[int, Meta(description="workflows claimed per polling round")] = 20
    poll_concurrency: Annotated[int, Meta(description="RAGNAROK status calls at once per replica")] = 10
    lease_seconds: Annotated[
        float, Meta(description="a claimed job's polling lease; must comfortably exceed RAGNAROK_TIMEOUT_SECONDS")
    ] = 60.0
    job_max_age_seconds: Annotated[
        float, Meta(description="Jobs still not final after this long are marked failed and no longer polled.")
    ] = 6 * 3600.0
    replica_id: Annotated[
        str, Meta(description="Identifies this replica in leases and outgoing calls; default: host-pid-random.")
    ] = ""
    events_stream_maxlen: Annotated[int, Meta(description="approximate cap of the RAGNAROK events stream")] = 100_000
    jobs_gauge_interval_seconds: Annotated[
        float, Meta(description="how often the jobs-by-status gauge is refreshed")
    ] = 15.0
    db_pool_size: Annotated[int, Meta(description="Postgres connections per process")] = 10
    run_migrations: Annotated[bool, Meta(description="apply database migrations at start-up")] = True

    def problems(self) -> list[str]:
        """Configuration that cannot work (checked at start-up)."""
        found: list[str] = []
        if self.lease_seconds < 2 * self.ragnarok_timeout_seconds:
            found.append("LEASE_SECONDS must be at least twice RAGNAROK_TIMEOUT_SECONDS")
        if self.poll_interval_seconds <= 0 or self.poll_tick_seconds <= 0:
            found.append("POLL_INTERVAL_SECONDS and POLL_TICK_SECONDS must be positive")
        if self.poll_backoff_factor < 1:
            found.append("POLL_BACKOFF_FACTOR must be >= 1")
        if self.poll_batch_size < 1 or self.poll_concurrency < 1:
            found.append("POLL_BATCH_SIZE and POLL_CONCURRENCY must be >= 1")
        if not self.ragnarok_url:
            found.append("RAGNAROK_URL is required")
        return found
