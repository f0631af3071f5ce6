"""Settings of the ragnarok-proxy, read once in ``main()`` (see ``montage_common.settings``)."""

from __future__ import annotations

from montage_common.settings import CommonSettings


class ProxySettings(CommonSettings, frozen=True, kw_only=True):
    """Environment: the upper-cased field names (``RAGNAROK_URL``, ``POLL_INTERVAL_SECONDS`` …)."""

    port: int = 8082
    ops_port: int = 9082  # /healthz, /readyz, /metrics
    ragnarok_url: str = "http://127.0.0.1:8001"  # the RAGNAROK service (make up starts a stand-in when unset)
    # Sent as ``Authorization: Bearer …`` to RAGNAROK when set.
    ragnarok_api_key: str = ""
    # Total time allowed for one RAGNAROK call (submit or status); past it the client gets 504.
    ragnarok_timeout_seconds: float = 10.0
    ragnarok_connect_timeout_seconds: float = 3.0  # connect timeout of RAGNAROK calls
    # Empty: no Trinity; enriched jobs go ahead with the enrichment marked unavailable.
    trinity_url: str = ""
    trinity_timeout_seconds: float = 5.0  # Trinity enrichment timeout (then the job goes ahead without it)
    # Background polling: first poll after ``poll_interval_seconds``; while a workflow's status does
    # not change (or RAGNAROK fails) the interval grows by ``poll_backoff_factor`` up to the max.
    poll_interval_seconds: float = 2.0
    poll_backoff_factor: float = 1.5  # growth of the polling interval while a workflow is unchanged
    poll_max_interval_seconds: float = 30.0  # longest polling interval
    # How often an idle replica looks for due jobs, and how many it claims at once.
    poll_tick_seconds: float = 0.5
    poll_batch_size: int = 20  # workflows claimed per polling round
    poll_concurrency: int = 10  # RAGNAROK status calls at once per replica
    # A claimed job's lease; must comfortably exceed ``ragnarok_timeout_seconds``.
    lease_seconds: float = 60.0
    # Jobs still not final after this long are marked failed and no longer polled.
    job_max_age_seconds: float = 6 * 3600.0
    # Identifies this replica in leases and outgoing calls; default: host-pid-random.
    replica_id: str = ""
    events_stream_maxlen: int = 100_000  # approximate cap of the RAGNAROK events stream
    jobs_gauge_interval_seconds: float = 15.0  # how often the jobs-by-status gauge is refreshed
    db_pool_size: int = 10  # Postgres connections per process
    run_migrations: bool = True  # apply database migrations at start-up

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
