"""Settings of the gateway, read once in ``main()`` (see ``montage_common.settings``)."""

from __future__ import annotations

from typing import Annotated, Literal

from montage_common.settings import CommonSettings
from msgspec import Meta

from montage_gateway.client_address import effective_hops

DEV_JWT_SECRET = "montage-dev-jwt-secret-not-for-production"


class GatewaySettings(CommonSettings, frozen=True, kw_only=True):
    """Environment: the upper-cased field names (``ORCHESTRATOR_URL``, ``SUPABASE_JWT_SECRET`` …)."""

    port: int = 8080
    ops_port: int = 9080
    orchestrator_url: Annotated[str, Meta(description="where /api/v1/* is forwarded")] = "http://127.0.0.1:8081"
    ragnarok_proxy_url: Annotated[
        str, Meta(description="where ragnarok-proxy is (forwarding; RAGNAROK clip rendering)")
    ] = "http://127.0.0.1:8082"
    frontend_url: Annotated[str, Meta(description="CORS: the browser origin(s) allowed, comma-separated.")] = (
        "http://localhost:3000"
    )
    trusted_proxy_hops: Annotated[
        int,
        Meta(
            ge=0,
            le=16,
            description="Trusted proxies in front of the gateway that append to X-Forwarded-For (Envoy: 1; a cloud load balancer before Envoy: 2); the client address is that many entries from the right. 0: the TCP peer.",
        ),
    ] = 0
    trust_forwarded_for: Annotated[
        bool, Meta(description="Deprecated: true counts as TRUSTED_PROXY_HOPS=1 (the last X-Forwarded-For entry).")
    ] = False
    max_connections_per_client: Annotated[
        int,
        Meta(
            ge=0,
            description="Open connections one client address (IPv4, or IPv6 /64) may hold; the next is closed at"
            " once. Only without trusted proxies (TRUSTED_PROXY_HOPS=0): behind one, every connection is the"
            " proxy's and the edge caps clients. 0: no cap.",
        ),
    ] = 128

    redis_max_connections: Annotated[
        int, Meta(description="Pool of the gateway's command connections (SSE fan-out uses one more, of its own).")
    ] = 64

    # --- auth -----------------------------------------------------------------------------
    supabase_jwt_secret: Annotated[
        str, Meta(description="Legacy HS256 secret; empty outside development means HS256 tokens are refused.")
    ] = ""
    supabase_jwks_url: Annotated[
        str,
        Meta(
            description="Asymmetric signing keys (RS256/ES256), e.g. https://<ref>.supabase.co/auth/v1/.well-known/jwks.json"
        ),
    ] = ""
    jwt_audience: Annotated[str, Meta(description="required aud claim")] = "authenticated"
    jwt_issuer: Annotated[str, Meta(description="checked when set")] = ""
    jwt_algorithms: Annotated[str, Meta(description="accepted JWT algorithms (never none)")] = "HS256,RS256,ES256"
    jwt_leeway_seconds: Annotated[float, Meta(description="clock skew allowed on exp and nbf")] = 10.0
    jwks_cache_seconds: Annotated[float, Meta(description="how long fetched signing keys are trusted")] = 600.0
    jwks_min_refetch_seconds: Annotated[
        float, Meta(description="at most one JWKS refetch per this interval (unknown kid)")
    ] = 30.0
    jwt_cache: Annotated[
        Literal["memory", "redis", "none"],
        Meta(
            description='"memory": verify locally, memoise verified tokens in-process (fastest, see docs/benchmarks.md); "redis": the spec\'s jwt_valid:{hash} cache; "none": verify every request. Never past exp.'
        ),
    ] = "memory"
    jwt_cache_seconds: Annotated[int, Meta(description="how long a verified token is cached (never past its exp)")] = (
        300
    )

    # --- rate limits ----------------------------------------------------------------------
    job_rate_limit: Annotated[int, Meta(description="jobs a user may create per JOB_RATE_WINDOW_SECONDS")] = 5
    job_rate_window_seconds: Annotated[int, Meta(description="sliding window of the job-creation limit")] = 3600
    guard_window_seconds: Annotated[
        int, Meta(description="window of the general request guard (every route but /api/v1/health)")
    ] = 60
    guard_user_requests: Annotated[int, Meta(description="requests per window per user")] = 600
    guard_ip_requests: Annotated[int, Meta(description="requests per window per client IP")] = 1200
    idempotency_ttl_seconds: Annotated[
        int, Meta(description="how long an upload's Idempotency-Key answers with its first response (per user)")
    ] = 86400
    idempotency_wait_seconds: Annotated[
        float,
        Meta(
            description="how long a repeated Idempotency-Key waits for the first request's outcome before it answers 409"
        ),
    ] = 15.0

    # --- forwarding -----------------------------------------------------------------------
    upstream_timeout_seconds: Annotated[float, Meta(description="forwarding timeout of every route but uploads")] = 30.0
    upload_timeout_seconds: Annotated[float, Meta(description="forwarding timeout of uploads")] = 60.0
    upstream_connect_timeout_seconds: Annotated[float, Meta(description="connect timeout to internal services")] = 5.0
    upstream_pool_size: Annotated[int, Meta(description="connections to internal services")] = 200
    max_body_bytes: Annotated[
        int, Meta(description="Largest request body forwarded (the 10 MB audio plus multipart overhead).")
    ] = 11 * 1024 * 1024

    # --- SSE ------------------------------------------------------------------------------
    sse_heartbeat_seconds: Annotated[float, Meta(description="interval of SSE heartbeat events")] = 30.0
    sse_max_per_job: Annotated[int, Meta(description="open streams per job (the next gets 503)")] = 10
    sse_max_per_user: Annotated[int, Meta(description="open streams per user")] = 30
    sse_close_after_final_seconds: Annotated[float, Meta(description="streams close this long after the job ends")] = (
        30.0
    )
    sse_write_timeout_seconds: Annotated[
        float, Meta(description="A write that does not complete in this time drops the connection (dead client).")
    ] = 30.0
    sse_queue_size: Annotated[int, Meta(description="events buffered per slow client before it is dropped")] = 512
    sse_slot_lease_seconds: Annotated[
        float, Meta(description="A connection's slot expires if its replica stops refreshing it (crash).")
    ] = 90.0
    stream_ticket_ttl_seconds: Annotated[
        int,
        Meta(
            description="Lifetime of an SSE ticket (reusable by its user for its job: EventSource reconnects with it); longer than JOB_TIMEOUT_SECONDS so one ticket covers a whole job. See docs/sse.md."
        ),
    ] = 1200

    # --- development ----------------------------------------------------------------------
    dev_token_ttl_seconds: Annotated[
        int, Meta(description="lifetime of development tokens (ENVIRONMENT=development only)")
    ] = 3600

    # --- operator console -----------------------------------------------------------------
    admin_role_claim: Annotated[
        str, Meta(description="The token claim (a dotted path) naming an admin of /admin/queues and /api/v1/admin/*.")
    ] = "app_metadata.role"
    admin_role_value: Annotated[
        str, Meta(description="an admin's value of ADMIN_ROLE_CLAIM (or an element of it, if a list)")
    ] = "admin"

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
    def proxy_hops(self) -> int:
        """Trusted X-Forwarded-For hops, the deprecated TRUST_FORWARDED_FOR included."""
        return effective_hops(self.trusted_proxy_hops, self.trust_forwarded_for)

    @property
    def connection_cap(self) -> int:
        """The per-client connection cap in force: none behind trusted proxies, whose address every
        connection would carry."""
        return 0 if self.proxy_hops else self.max_connections_per_client

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
