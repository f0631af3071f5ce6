"""Settings of the gateway, read once in ``main()`` (see ``montage_common.settings``)."""

from __future__ import annotations

from typing import Literal

from montage_common.settings import CommonSettings

DEV_JWT_SECRET = "montage-dev-jwt-secret-not-for-production"


class GatewaySettings(CommonSettings, frozen=True, kw_only=True):
    """Environment: the upper-cased field names (``ORCHESTRATOR_URL``, ``SUPABASE_JWT_SECRET`` …)."""

    port: int = 8080
    ops_port: int = 9080  # /healthz, /readyz, /metrics
    orchestrator_url: str = "http://127.0.0.1:8081"  # where /api/v1/* is forwarded
    ragnarok_proxy_url: str = "http://127.0.0.1:8082"  # where ragnarok-proxy is (forwarding; RAGNAROK clip rendering)
    # CORS: the browser origin(s) allowed, comma-separated.
    frontend_url: str = "http://localhost:3000"
    # If X-Forwarded-For's first hop is the client address (behind a trusted load balancer).
    trust_forwarded_for: bool = False

    # Pool of the gateway's command connections (SSE fan-out uses one more, of its own).
    redis_max_connections: int = 64

    # --- auth -----------------------------------------------------------------------------
    # Legacy HS256 secret; empty outside development means HS256 tokens are refused.
    supabase_jwt_secret: str = ""
    # Asymmetric signing keys (RS256/ES256), e.g. https://<ref>.supabase.co/auth/v1/.well-known/jwks.json
    supabase_jwks_url: str = ""
    jwt_audience: str = "authenticated"  # required aud claim
    jwt_issuer: str = ""  # checked when set
    jwt_algorithms: str = "HS256,RS256,ES256"  # accepted JWT algorithms (never none)
    jwt_leeway_seconds: float = 10.0  # clock skew allowed on exp and nbf
    jwks_cache_seconds: float = 600.0  # how long fetched signing keys are trusted
    jwks_min_refetch_seconds: float = 30.0  # at most one JWKS refetch per this interval (unknown kid)
    # "memory": verify locally, memoise verified tokens in-process (fastest, see docs/benchmarks.md);
    # "redis": the spec's jwt_valid:{hash} cache; "none": verify every request. Never past exp.
    jwt_cache: Literal["memory", "redis", "none"] = "memory"
    jwt_cache_seconds: int = 300  # how long a verified token is cached (never past its exp)

    # --- rate limits ----------------------------------------------------------------------
    job_rate_limit: int = 5
    job_rate_window_seconds: int = 3600  # sliding window of the job-creation limit
    # General request guard (fixed one-minute windows) on every endpoint but health/metrics.
    guard_window_seconds: int = 60
    guard_user_requests: int = 600  # requests per window per user
    guard_ip_requests: int = 1200  # requests per window per client IP

    # --- forwarding -----------------------------------------------------------------------
    upstream_timeout_seconds: float = 30.0
    upload_timeout_seconds: float = 60.0  # forwarding timeout of uploads
    upstream_connect_timeout_seconds: float = 5.0  # connect timeout to internal services
    upstream_pool_size: int = 200  # connections to internal services
    # Largest request body forwarded (the 10 MB audio plus multipart overhead).
    max_body_bytes: int = 11 * 1024 * 1024

    # --- SSE ------------------------------------------------------------------------------
    sse_heartbeat_seconds: float = 30.0
    sse_max_per_job: int = 10  # open streams per job (the next gets 503)
    sse_max_per_user: int = 30  # open streams per user
    sse_close_after_final_seconds: float = 30.0  # streams close this long after the job ends
    # A write that does not complete in this time drops the connection (dead client).
    sse_write_timeout_seconds: float = 30.0
    sse_queue_size: int = 512  # events buffered per slow client before it is dropped
    # A connection's slot expires if its replica stops refreshing it (crash).
    sse_slot_lease_seconds: float = 90.0
    # Lifetime of an SSE ticket (reusable by its user for its job: EventSource reconnects with it);
    # longer than JOB_TIMEOUT_SECONDS so one ticket covers a whole job. See docs/sse.md.
    stream_ticket_ttl_seconds: int = 1200

    # --- development ----------------------------------------------------------------------
    dev_token_ttl_seconds: int = 3600

    # --- operator console -----------------------------------------------------------------
    # The token claim (a dotted path) naming an admin of /admin/queues and /api/v1/admin/*.
    admin_role_claim: str = "app_metadata.role"
    admin_role_value: str = "admin"  # an admin's value of ADMIN_ROLE_CLAIM (or an element of it, if a list)

    @property
    def jwt_secret(self) -> str:
        """The HS256 secret in force: the configured one, or a fixed default in development."""
        if self.supabase_jwt_secret:
            return self.supabase_jwt_secret
        return DEV_JWT_SECRET if self.environment == "development" else ""

    @property
    def allowed_origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.frontend_url.split(",") if o.strip())

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.jwt_algorithms.split(",") if a.strip())

    def problems(self) -> list[str]:
        """Configuration that cannot work (checked at start-up)."""
        found: list[str] = []
        if not self.jwt_secret and not self.supabase_jwks_url:
            found.append("set SUPABASE_JWT_SECRET or SUPABASE_JWKS_URL (no dev default outside development)")
        if self.is_production and self.supabase_jwt_secret == DEV_JWT_SECRET:
            found.append("SUPABASE_JWT_SECRET must not be the development default")
        bad = set(self.algorithms) - {"HS256", "RS256", "ES256"}
        if bad:
            found.append(f"JWT_ALGORITHMS has unsupported values: {sorted(bad)}")
        if self.sse_max_per_job < 1 or self.sse_max_per_user < 1:
            found.append("SSE_MAX_PER_JOB and SSE_MAX_PER_USER must be >= 1")
        if not self.admin_role_claim.strip(".") or not self.admin_role_value:
            found.append("ADMIN_ROLE_CLAIM and ADMIN_ROLE_VALUE must not be empty")
        if self.sse_slot_lease_seconds <= self.sse_heartbeat_seconds:
            found.append("SSE_SLOT_LEASE_SECONDS must exceed SSE_HEARTBEAT_SECONDS")
        return found
