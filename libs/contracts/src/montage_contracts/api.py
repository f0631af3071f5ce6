"""The bodies of the public HTTP API as msgspec Structs: the source of the OpenAPI document.

The gateway's ``/api/v1/openapi.json`` is generated from these types
(``msgspec.json.schema_components``) plus route metadata (``montage_gateway.openapi``); nothing in
the document is a hand-written schema. Each Struct is the shape of one body *on the wire*: money
is a JSON number (the services encode ``Decimal`` with ``decimal_format="number"``), times are
RFC 3339 strings. A field without a default is present in every such body (``required`` in the
schema); ``X | None`` without a default is present and may be ``null``; a field with a default
may be absent.

The SSE stream of a job is described by :data:`SseEvent`, a union of one Struct per event type
tagged by ``event`` (the SSE ``event:`` line), each carrying the ``data:`` payload Struct and,
for logged events, the ``id:`` to resume from with ``Last-Event-ID``.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta, Struct

from montage_contracts import pipeline
from montage_contracts.errors import JOB_FAILURE_CODES, ErrorCode
from montage_contracts.pipeline import JobStatus, StageStatus, StageUpdate

# One path segment as the gateway accepts it: not empty, not `.` or `..`, no `/` (not even
# encoded), no control characters.
# One path segment as the path guard (montage_common.web.guard.unsafe_path) lets it through: no
# slash, backslash, percent sign (the guard decodes up to three times) or control character, and
# not a dot segment, also after Unicode compatibility folding (U+2024, U+FE52, U+FF0E fold to
# ".", U+2025 and U+FE30 to "..").
PathSegment = Annotated[
    str,
    Meta(pattern=r"^(?![.\u2024\uFE52\uFF0E]{1,2}$|[\u2025\uFE30]$)[^/\\%\x00-\x1f\x7f]+$"),
]
# The vocabularies are defined once: a status is a `pipeline.JobStatus` and a code an
# `errors.ErrorCode` (enums, so the document lists them once, as components of those names). The
# stage names and the codes a job can fail with are Literals made from them (subsets, inline).
# A body that always has one status says which (msgspec's Literals hold the enum's value).
if TYPE_CHECKING:
    StageName = str
    JobErrorCode = str
    Queued = Literal[JobStatus.QUEUED]
    Failed = Literal[JobStatus.FAILED]
else:
    StageName = Literal[pipeline.STAGES]
    JobErrorCode = Literal[tuple(sorted(str(c) for c in JOB_FAILURE_CODES))]
    Queued = Literal[JobStatus.QUEUED.value]
    Failed = Literal[JobStatus.FAILED.value]
# The state of a dependency in a health report.
DependencyState = Literal["connected", "failed"]
Money = Annotated[float, Meta(description="US dollars (a JSON number, up to 6 decimals)", examples=[0.0125])]
Progress = Annotated[int, Meta(ge=0, le=100, description="Percent done (fixed marks per stage)")]
Seconds = Annotated[int, Meta(ge=0, description="Seconds")]
JobId = Annotated[str, Meta(description="The job's UUID", extra_json_schema={"format": "uuid"})]
# Every time of every API, as :func:`timestamp` writes it (handlers pass its text, not a datetime,
# so the milliseconds and the ``Z`` are the same everywhere).
Timestamp = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$",
        description="RFC 3339 in UTC with milliseconds",
        examples=["2026-01-01T12:00:00.000Z"],
    ),
]
IdempotencyKey = Annotated[
    str,
    Meta(
        description=(
            'IETF httpapi draft "The Idempotency-Key HTTP Header Field": a key of your own for this upload (a'
            ' UUID from `crypto.randomUUID()`), as a Structured Field string (`"…"`) or bare; 1-255 visible'
            " ASCII characters without spaces, quotes or backslashes (else 400). The same key from the same"
            " user within 24 h answers the first response (same status and body, `Idempotent-Replayed: true`)"
            " and creates nothing, takes no rate-limit slot; with another file or prompt it answers 422; while"
            " the first is still being processed a repeat waits for it (up to 15 s), then 409. Only a created"
            " job is remembered: after any other answer the key may be sent again."
        ),
        pattern=r'^(?:"[\x21\x23-\x5b\x5d-\x7e]{1,255}"|[\x21\x23-\x5b\x5d-\x7e]{1,255})$',
        examples=["8e03978e-40d5-43e8-bc93-6894a57f9324"],
    ),
]


def timestamp(moment: datetime) -> str:
    """The one time format of every API: RFC 3339 in UTC, milliseconds, ``Z``.

    The same text as JavaScript's ``Date.prototype.toISOString()``: ``2026-01-01T12:00:00.000Z``.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_ms(ms: int) -> str:
    """:func:`timestamp` of milliseconds since the epoch (a stream entry id, a file's mtime); integer
    arithmetic, so the milliseconds are exact."""
    return timestamp(_EPOCH + timedelta(milliseconds=ms))


# --- errors ---------------------------------------------------------------------------------
class Error(Struct, kw_only=True):
    """Every error response: a message, a code, whether retrying may help, the job if any."""

    error: Annotated[str, Meta(description="Human-readable message")]
    code: ErrorCode
    retryable: bool
    job_id: Annotated[str | None, Meta(description="The job concerned, if any")]


class RateLimited(Error, kw_only=True):
    """429 of the gateway: the job-creation limit (5 per user per hour) or the request guard."""

    retry_after: Annotated[int, Meta(ge=1, description="Seconds until a retry can succeed (also `Retry-After`)")]
    limit: Annotated[int, Meta(ge=1, description="Requests (or jobs) allowed per window")]
    window: Annotated[str, Meta(description="The window", examples=["1 hour", "60 seconds"])]


class Busy(Error, kw_only=True):
    """503 of the upload when Montage is busy (code `SERVICE_UNAVAILABLE`, with `estimated_wait`): a new
    job would wait longer than `ADMISSION_MAX_WAIT_SECONDS` to start. Nothing was stored and the
    job-creation slot was given back; retry after `retry_after`."""

    retry_after: Annotated[
        int, Meta(ge=1, description="Seconds until a new job is expected to start in time (also `Retry-After`)")
    ]
    estimated_wait: Annotated[int, Meta(ge=0, description="Seconds a job uploaded now would wait to start")]


class NexusError(Error, kw_only=True):
    """An error answered by the Nexus proxy: Montage's error body plus RAGNAROK's ``detail``."""

    trace_id: Annotated[str, Meta(description="The Nexus trace id of the request", examples=["nxs_1700000000_ab12cd"])]
    detail: Annotated[str | None, Meta(description="RAGNAROK's own error detail, when RAGNAROK answered")] = None
    retry_after: Annotated[int | str | None, Meta(description="RAGNAROK's `Retry-After`, when it sent one")] = None


# --- jobs -----------------------------------------------------------------------------------
# What montage_orchestrator.upload.check_prompt accepts, as a pattern: no control character but tab
# and line breaks, and 50 to 500 characters from the first to the last that Python's str.strip()
# keeps (the default PROMPT_MIN_CHARS and PROMPT_MAX_CHARS). Whitespace is spelled out (not \s):
# pattern engines disagree on Unicode spaces, str.strip() does not.
_NOT_CONTROL = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
_SPACE = r"[\t\n\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_KEPT = r"[^\t\n\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]"
PROMPT_PATTERN = f"^{_SPACE}*{_KEPT}{_NOT_CONTROL}{{48,498}}{_KEPT}{_SPACE}*$"
PROMPT_MAX_SENT = 2000  # characters of user_prompt as sent, padding included (the trimmed text is 50-500)
QueuePosition = Annotated[
    Annotated[int, Meta(ge=1)] | None,
    Meta(description="While `queued`: the job's place in line for a turn (1 = next); `null` otherwise"),
]
EstimatedStart = Annotated[
    Timestamp | None,
    Meta(description="While `queued`: when its first stage is expected to start (UTC); `null` otherwise"),
]


class UploadForm(Struct, kw_only=True):
    """``multipart/form-data`` of ``POST /api/v1/upload-audio``."""

    audio_file: Annotated[
        str,
        Meta(
            min_length=1,
            description="MP3, WAV or FLAC (decided from the bytes), at most 10 MB and 10 minutes",
            # format binary too: what generators (openapi-python-client, openapi-typescript) read as a file
            extra_json_schema={"contentMediaType": "application/octet-stream", "format": "binary"},
        ),
    ]
    user_prompt: Annotated[
        str,
        Meta(
            min_length=50,
            max_length=PROMPT_MAX_SENT,
            pattern=PROMPT_PATTERN,
            description="What the video should show: 50 to 500 characters once trimmed (at most"
            f" {PROMPT_MAX_SENT} as sent); no control character but tab and line breaks",
        ),
    ]
    webhook_url: WebhookUrl = ""


WEBHOOK_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[\x21-\x7e]+$"
WEBHOOK_URL_MAX = 2048
WebhookUrl = Annotated[
    str,
    Meta(
        max_length=WEBHOOK_URL_MAX,
        pattern=WEBHOOK_URL_PATTERN,
        description=(
            "Optional: where Montage POSTs this job's final event (`job.completed`, `job.failed`,"
            " `job.cancelled`), signed by the Standard Webhooks rules (docs/frontend.md). `https` only"
            " outside development; the host must resolve to public addresses only (no loopback, private,"
            " link-local, CGNAT, multicast or metadata address; development allows loopback): else 400"
        ),
    ),
]


class JobCreated(Struct, kw_only=True):
    """201 of the upload: the job is queued."""

    job_id: JobId
    status: Queued
    estimated_cost: Money
    created_at: Timestamp


PosterUrl = Annotated[
    str | None,
    Meta(description="Signed URL (1 hour) of a frame of the final video (JPEG) once completed; `null` otherwise"),
]


class Job(Struct, kw_only=True):
    """One job (``GET /api/v1/jobs/{job_id}``)."""

    job_id: JobId
    status: JobStatus
    current_stage: StageName | None
    progress: Progress
    estimated_remaining: Annotated[Seconds, Meta(description="Expected seconds left (0 when final)")]
    total_cost: Money
    video_url: Annotated[str | None, Meta(description="Signed URL of the video (1 hour) once completed")]
    error_message: str | None
    error_code: Annotated[
        JobErrorCode | None,
        Meta(description="Why the job failed (`CANCELLED` for a cancelled job); `null` unless failed"),
    ]
    retryable: Annotated[
        bool, Meta(description="The job failed, and submitting the same song and prompt again may succeed")
    ]
    created_at: Timestamp
    updated_at: Timestamp
    queue_position: QueuePosition
    estimated_start: EstimatedStart
    retry_of: Annotated[
        JobId | None,
        Meta(description="The failed or cancelled job this one retries (`POST …/retry`); `null` for an upload"),
    ] = None
    retried_by: Annotated[
        JobId | None, Meta(description="The job that retries this one; `null` until it is retried (at most once)")
    ] = None
    poster_url: PosterUrl = None


class JobListItem(Struct, kw_only=True):
    """One entry of ``GET /api/v1/jobs`` (a summary: no URL, no error text)."""

    job_id: JobId
    status: JobStatus
    current_stage: StageName | None
    progress: Progress
    total_cost: Money
    created_at: Timestamp
    completed_at: Timestamp | None
    queue_position: QueuePosition
    estimated_start: EstimatedStart
    retry_of: Annotated[
        JobId | None,
        Meta(description="The failed or cancelled job this one retries (`POST …/retry`); `null` for an upload"),
    ] = None
    retried_by: Annotated[
        JobId | None, Meta(description="The job that retries this one; `null` until it is retried (at most once)")
    ] = None


class JobList(Struct, kw_only=True):
    """The caller's jobs, newest first."""

    jobs: list[JobListItem]
    total: Annotated[int, Meta(ge=0, description="All of the caller's jobs matching the filter")]
    limit: Annotated[int, Meta(ge=1, le=50)]
    offset: Annotated[int, Meta(ge=0)]


class JobRetried(Struct, kw_only=True):
    """201 of the retry: a new job that continues a failed or cancelled one from the stage it did not finish."""

    job_id: Annotated[JobId, Meta(description="The new job: watch, cancel and download it like any other")]
    status: Queued
    estimated_cost: Annotated[Money, Meta(description="The pre-flight estimate of the whole song (as for an upload)")]
    created_at: Timestamp
    retry_of: Annotated[JobId, Meta(description="The job retried (its history stays as it was)")]
    resumed_from: Annotated[StageName, Meta(description="The first stage the new job runs")]
    reused_stages: Annotated[
        list[StageName],
        Meta(description="The stages whose stored output (and files) it reuses; their cost is not charged again"),
    ]


class Cancelled(Struct, kw_only=True):
    """200 of the cancel: the job is now failed with code ``CANCELLED``."""

    job_id: JobId
    status: Failed
    message: str


class Download(Struct, kw_only=True):
    """A signed link to the finished video."""

    download_url: str
    expires_in: Annotated[int, Meta(ge=1, description="Seconds the link stays valid")]
    filename: Annotated[str, Meta(examples=["music_video_6f1c….mp4"])]


class StreamTicket(Struct, kw_only=True):
    """A ticket for ``GET …/stream?ticket=`` (browsers' ``EventSource`` sends no headers).

    Valid for the caller and this job only, for any number of connections until it expires, so
    an ``EventSource`` reconnects with the same URL by itself (docs/sse.md)."""

    ticket: str
    expires_in: Annotated[int, Meta(ge=1, description="Seconds the ticket stays valid")]


# --- webhooks -------------------------------------------------------------------------------
WebhookEventType = Literal["job.completed", "job.failed", "job.cancelled"]


class WebhookDefaultRequest(Struct, kw_only=True):
    """``POST /api/v1/webhook``: the caller's default webhook URL (its uploads without one take it)."""

    webhook_url: WebhookUrl


class WebhookDefault(Struct, kw_only=True):
    """The caller's default webhook URL (``null``: none; uploads without `webhook_url` send no webhook)."""

    webhook_url: Annotated[str | None, Meta(description="Where the caller's jobs report when the upload names none")]
    updated_at: Timestamp | None


class WebhookJobData(Struct, kw_only=True):
    """The job a webhook event is about, as it was when it became final."""

    job_id: JobId
    status: Annotated[JobStatus, Meta(description="`completed` or `failed` (a cancelled job is `failed`)")]
    video_url: Annotated[
        str | None,
        Meta(
            description="`job.completed`: a signed URL of the video, made when this attempt was sent and valid"
            " for `DOWNLOAD_URL_SECONDS` (1 hour) from then; `null` otherwise or once the video is gone"
        ),
    ]
    total_cost: Money
    error: Annotated[str | None, Meta(description="Why it failed; `null` for `job.completed`")]
    error_code: Annotated[JobErrorCode | None, Meta(description="`CANCELLED` for `job.cancelled`")]
    retryable: Annotated[bool, Meta(description="As the job's `retryable`: submitting again may succeed")]
    completed_at: Timestamp | None
    retry_of: Annotated[JobId | None, Meta(description="The job this one retried, if it is a retry")] = None


class WebhookEvent(Struct, kw_only=True):
    """The body of every webhook delivery (Standard Webhooks: `type`, `timestamp`, `data`). The same
    event is sent with the same `webhook-id` header on every attempt: deduplicate on it."""

    type: WebhookEventType
    timestamp: Annotated[Timestamp, Meta(description="When the job became final")]
    data: WebhookJobData


# --- assets ---------------------------------------------------------------------------------
AssetKind = Literal["still", "clip", "video", "poster"]


class Asset(Struct, kw_only=True):
    """One file of a job a page can show: a preview (still, clip), the final video or its poster."""

    kind: Annotated[
        AssetKind, Meta(description="`still` (PNG), `clip` (MP4), `video` (the final MP4), `poster` (JPEG)")
    ]
    index: Annotated[
        int,
        Meta(
            ge=0, description="The still's or clip's index (as in its `preview` event); 0 for the video and the poster"
        ),
    ]
    subject: StillSubject
    url: Annotated[str, Meta(description="Signed URL (valid `expires_in` seconds)")]
    created_at: Timestamp


class JobAssets(Struct, kw_only=True):
    """``GET /api/v1/jobs/{job_id}/assets``: the job's stills and clips as they were stored, then the
    final video and its poster once completed; empty once its files expired or were deleted."""

    job_id: JobId
    assets: list[Asset]
    expires_in: Annotated[int, Meta(ge=1, description="Seconds the URLs stay valid")]


# --- usage ----------------------------------------------------------------------------------
class Usage(Struct, kw_only=True):
    """``GET /api/v1/usage``: the caller's job-creation window (the gateway's rate limiter, the same
    numbers as the upload's ``RateLimit`` headers and its 429), active jobs and this month's spend."""

    jobs_used: Annotated[int, Meta(ge=0, description="Jobs created in the current sliding window")]
    jobs_limit: Annotated[int, Meta(ge=1, description="Jobs allowed per window (also `RateLimit-Policy` `q`)")]
    jobs_remaining: Annotated[int, Meta(ge=0, description="Jobs that can be created now (also `RateLimit` `r`)")]
    window_seconds: Annotated[int, Meta(ge=1, description="The sliding window (also `RateLimit-Policy` `w`)")]
    next_slot_at: Annotated[
        Timestamp | None,
        Meta(description="When the oldest job in the window leaves it and frees a slot; null when none counts"),
    ]
    retry_after: Annotated[
        int, Meta(ge=0, description="Seconds until an upload can be accepted: 0 while `jobs_remaining` > 0")
    ]
    active_jobs: Annotated[int, Meta(ge=0, description="The caller's jobs queued or processing")]
    spent_this_month: Annotated[Money, Meta(description="Provider costs of the caller's jobs since `month_start`")]
    month_start: Annotated[Timestamp, Meta(description="The first instant of the current calendar month (UTC)")]


class InternalUsage(Struct, kw_only=True):
    """The orchestrator's ``GET /internal/usage`` (what Postgres knows): the gateway adds the window."""

    active_jobs: int
    spent_this_month: Money
    month_start: Timestamp


# --- health ---------------------------------------------------------------------------------
class Queue(Struct, kw_only=True):
    size: Annotated[int, Meta(ge=0, description="Stage tasks not yet finished, all stages")]
    active_jobs: Annotated[int, Meta(ge=0)]
    workers: Annotated[int, Meta(ge=0, description="Live stage-worker processes")]
    stages: Annotated[dict[str, int], Meta(description="Unfinished tasks per stage")]


ProviderState = Literal["local", "unconfigured", "ready", "answering", "failing"]


class ProviderReadiness(Struct, kw_only=True):
    """One stage's generation provider, as its workers announce it and its calls went (no paid
    endpoint is called to find out: the workers record each call's outcome in Redis)."""

    stage: str
    provider: Annotated[str, Meta(description="e.g. runway, ragnarok, openai-chat; local or none: no provider")]
    configured: Annotated[bool, Meta(description="Its settings are present (e.g. RUNWAY_API_KEY)")]
    setting: Annotated[str, Meta(description="The settings that configure it")]
    state: Annotated[
        ProviderState,
        Meta(
            description="local: the stage runs without a provider; unconfigured: its settings are missing;"
            " ready: configured, not called yet; answering: its last call succeeded; failing: its last call failed"
        ),
    ]
    last_success: Timestamp | None = None
    last_failure: Timestamp | None = None
    last_error: str | None = None


class Healthy(Struct, kw_only=True):
    """200 of ``GET /api/v1/health``."""

    status: Literal["healthy"]
    timestamp: Timestamp
    queue: Queue
    database: Literal["connected"]
    redis: Literal["connected"]
    providers: Annotated[
        list[ProviderReadiness], Meta(description="Each stage's provider and its readiness (as its workers report)")
    ] = []


class Unhealthy(Struct, kw_only=True):
    """503 of ``GET /api/v1/health``."""

    status: Literal["unhealthy"]
    timestamp: Timestamp
    issues: Annotated[list[str], Meta(min_length=1, examples=[["database connection failed"]])]
    providers: Annotated[
        list[ProviderReadiness], Meta(description="Each stage's provider and its readiness (as its workers report)")
    ] = []


class InternalHealth(Struct, kw_only=True):
    """The orchestrator's ``GET /internal/health`` (200 healthy, 503 not): the gateway's health asks it."""

    status: Literal["healthy", "unhealthy"]
    timestamp: Timestamp
    database: DependencyState
    redis: DependencyState
    queue: Queue
    issues: list[str]


# --- development ----------------------------------------------------------------------------
class DevTokenRequest(Struct, kw_only=True):
    user_id: Annotated[str, Meta(pattern="^[A-Za-z0-9._@:-]{1,128}$", examples=["alice"])]


class DevToken(Struct, kw_only=True):
    access_token: Annotated[str, Meta(description="HS256 JWT signed with the development secret")]
    token_type: Literal["bearer"]
    expires_in: Annotated[int, Meta(ge=1)]
    user_id: str


# --- Nexus (RAGNAROK) -----------------------------------------------------------------------
BusinessName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00]*[^\s\x00][^\x00]*$",
        description="Not blank; no NUL characters (they cannot be stored)",
    ),
]
# Text the Nexus job record (Postgres jsonb) can store: no NUL. ragnarok-proxy refuses (400) a body
# with NUL in any string or key, at any depth, before RAGNAROK is called.
NO_NUL = r"^[^\x00]*$"
STORABLE_JSON = "StorableJson"
STORABLE_JSON_REF = {"$ref": f"#/components/schemas/{STORABLE_JSON}"}
# Components the document adds to those msgspec generates (a recursive schema has no Python type).
EXTRA_COMPONENTS: dict[str, dict[str, Any]] = {
    STORABLE_JSON: {
        "description": "A JSON value without NUL characters in its text or keys (they cannot be stored); the"
        " proxy refuses NUL at any depth, this schema checks the first level (a recursive schema is not"
        " something generated TypeScript types can express)",
        "anyOf": [
            {"type": "string", "pattern": NO_NUL},
            {"type": ["number", "boolean", "null"]},
            {"type": "array"},
            {"type": "object", "propertyNames": {"pattern": NO_NUL}},
        ],
    }
}
# On a body whose extra fields are forwarded: each is storable JSON, and so is every key.
STORABLE_EXTRAS = Meta(
    extra_json_schema={"propertyNames": {"pattern": NO_NUL}, "additionalProperties": STORABLE_JSON_REF}
)
# Keywords a Struct's component carries beyond its fields (msgspec has no class-level schema option):
# what the extra properties of a body may be.
SCHEMA_EXTRAS: dict[str, dict[str, Any]] = {
    # Extra form fields are ignored, but each part's name is a header value: control characters but
    # tab are refused by the multipart parser (400).
    "UploadForm": {"propertyNames": {"pattern": r"^[^\x00-\x08\x0a-\x1f\x7f]*$"}},
    # The Nexus submits forward their extra fields to RAGNAROK and record them: storable JSON.
    "DirectSubmitBody": dict(STORABLE_EXTRAS.extra_json_schema or {}),
    "EnrichedRequest": dict(STORABLE_EXTRAS.extra_json_schema or {}),
}
Industry = Annotated[Annotated[str, Meta(pattern=NO_NUL)] | None, Meta(description="Optional industry")]
Duration = Annotated[float, Meta(ge=5, le=120, description="Optional video length in seconds")] | None


class DirectSubmitBody(Struct, kw_only=True):
    """Optional JSON body of the direct submit: forwarded to RAGNAROK with ``business_name``."""

    industry: Industry = None
    duration_seconds: Duration = None
    enrichment: Annotated[dict[str, Any], Meta(extra_json_schema=STORABLE_EXTRAS.extra_json_schema)] | None = None


class EnrichedRequest(Struct, kw_only=True):
    """Body of the enriched submit: Trinity enriches it, then it is forwarded to RAGNAROK."""

    company_name: BusinessName
    industry: Industry = None
    duration_seconds: Duration = None


class NexusSubmitted(Struct, kw_only=True):
    """202: RAGNAROK accepted the workflow; poll ``tracking_url``."""

    job_id: Annotated[str, Meta(examples=["job_0f8e…"])]
    workflow_id: str
    status: JobStatus  # a Nexus job has the same four statuses as a Montage job
    tracking_url: str
    trace_id: str


class NexusEnrichedSubmitted(NexusSubmitted, kw_only=True):
    """202 of the enriched submit, with Trinity's answer (``available: false`` when it could not help)."""

    enrichment: dict[str, Any]


class NexusJob(Struct, kw_only=True):
    """A Nexus job and the last known state of its RAGNAROK workflow."""

    job_id: str
    workflow_id: str
    status: JobStatus  # a Nexus job has the same four statuses as a Montage job
    tracking_url: str
    business_name: str
    video_url: str | None
    cost_usd: float | None
    quality_score: float | None
    error: str | None
    enrichment: dict[str, Any] | None
    trace_id: str
    created_at: Timestamp
    updated_at: Timestamp
    completed_at: Timestamp | None


# --- SSE (GET /api/v1/jobs/{job_id}/stream) ---------------------------------------------------
EventId = Annotated[str, Meta(pattern=r"^[0-9]+-[0-9]+$", description="SSE `id:`; resume with `Last-Event-ID`")]


class StateData(Struct, kw_only=True):
    job_id: JobId
    status: JobStatus
    current_stage: StageName | None
    progress: Progress
    estimated_remaining: Seconds
    total_cost: Money
    video_url: str | None
    error_message: str | None
    error_code: Annotated[JobErrorCode | None, Meta(description="Why the job failed (`null` unless failed)")] = None
    queue_position: QueuePosition = None
    estimated_start: EstimatedStart = None
    poster_url: PosterUrl = None


class StageUpdateData(Struct, kw_only=True, omit_defaults=True):
    stage: StageName
    status: StageUpdate
    duration: Annotated[float | None, Meta(description="Seconds the stage took (on `completed`)")] = None


class ProgressData(Struct, kw_only=True):
    progress: Progress
    estimated_remaining: Seconds


class MessageData(Struct, kw_only=True):
    text: str
    stage: StageName


class CostUpdateData(Struct, kw_only=True):
    stage: StageName
    cost: Money
    total: Money


class CompletedData(Struct, kw_only=True, omit_defaults=True):
    video_url: Annotated[
        str, Meta(description="Signed URL of the video (1 hour); empty when rebuilt after the video expired")
    ]
    total_cost: Money
    poster_url: PosterUrl = None


# A preview is a reference still (reference_generator) or a clip (video_generator) as it is stored.
PreviewKind = Literal["still", "clip"]
StillSubject = Annotated[
    Literal["scene", "character"] | None,
    Meta(
        description="What a still shows: a scene (`index`: the scene's place in the plan) or a character; `null` for a clip"
    ),
]


class PreviewData(Struct, kw_only=True):
    kind: Annotated[PreviewKind, Meta(description="`still`: a PNG reference image; `clip`: an MP4 clip (no sound)")]
    index: Annotated[int, Meta(ge=0, description="The scene's (or character's) place in the plan, or the clip's index")]
    url: Annotated[str, Meta(description="Signed URL of the file (1 hour); `GET …/assets` gives fresh ones")]
    subject: StillSubject = None


class ErrorData(Struct, kw_only=True):
    error: str
    code: ErrorCode
    retryable: bool


class HeartbeatData(Struct, kw_only=True):
    timestamp: Timestamp


class StateEvent(Struct, kw_only=True, tag="state", tag_field="event"):
    """First message of every stream: the job as it is now. Its ``id:`` is the resume point: the
    client's ``Last-Event-ID``, or on a fresh connection the newest logged event (``0-0`` for an
    empty log); the state reflects every event up to it, and only events after it follow."""

    id: EventId
    data: StateData


class StageUpdateEvent(Struct, kw_only=True, tag="stage_update", tag_field="event"):
    """A stage started or completed."""

    id: EventId
    data: StageUpdateData


class ProgressEvent(Struct, kw_only=True, tag="progress", tag_field="event"):
    """Progress after a stage completed."""

    id: EventId
    data: ProgressData


class MessageEvent(Struct, kw_only=True, tag="message", tag_field="event"):
    """A stage's progress text, or a fallback notice."""

    id: EventId
    data: MessageData


class CostUpdateEvent(Struct, kw_only=True, tag="cost_update", tag_field="event"):
    """A new cost was recorded."""

    id: EventId
    data: CostUpdateData


class PreviewEvent(Struct, kw_only=True, tag="preview", tag_field="event"):
    """A reference still or a clip was stored: something to show before the video is done."""

    id: EventId
    data: PreviewData


class CompletedEvent(Struct, kw_only=True, tag="completed", tag_field="event"):
    """Final: the video is ready."""

    id: EventId
    data: CompletedData


class ErrorEvent(Struct, kw_only=True, tag="error", tag_field="event"):
    """Final: the job failed (or was cancelled)."""

    id: EventId
    data: ErrorData


class HeartbeatEvent(Struct, kw_only=True, tag="heartbeat", tag_field="event"):
    """Every 30 s (no ``id:``), to keep proxies from closing an idle stream."""

    data: HeartbeatData


SseEvent = (
    StateEvent
    | StageUpdateEvent
    | ProgressEvent
    | MessageEvent
    | CostUpdateEvent
    | PreviewEvent
    | CompletedEvent
    | ErrorEvent
    | HeartbeatEvent
)
SSE_EVENTS: tuple[type[Struct], ...] = (
    StateEvent,
    StageUpdateEvent,
    ProgressEvent,
    MessageEvent,
    CostUpdateEvent,
    PreviewEvent,
    CompletedEvent,
    ErrorEvent,
    HeartbeatEvent,
)


# --- SSE of all the caller's jobs (GET /api/v1/events) ----------------------------------------
class UserStateData(Struct, kw_only=True):
    jobs: Annotated[
        list[JobListItem],
        Meta(description="The caller's queued and processing jobs now, newest first (at most 50 of each)"),
    ]


class UserStateEvent(Struct, kw_only=True, tag="state", tag_field="event"):
    """First message of every connection: the caller's active jobs now. Its ``id:`` is the resume
    point in the caller's log (``Last-Event-ID``, or the newest logged event on a fresh connection)."""

    id: EventId
    data: UserStateData


def _user_event(cls: type[Struct]) -> type[Struct]:
    """The user stream's form of a logged job event: the same event, ``job_id`` added to its data."""
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    payload: type[Struct] = fields["data"].type
    data = msgspec.defstruct(
        f"User{payload.__name__}",
        [("job_id", JobId)],
        bases=(payload,),
        kw_only=True,
        module=__name__,
    )
    name = sse_event_name(cls)
    return msgspec.defstruct(
        f"User{cls.__name__}",
        [("id", EventId), ("data", data)],
        kw_only=True,
        tag=name,
        tag_field="event",
        module=__name__,
    )


def sse_event_name(cls: type[Struct]) -> str:
    """The SSE ``event:`` name of one of :data:`SSE_EVENTS`."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


# One per logged event of the job stream, in the same order (their ``data`` has ``job_id`` first on the wire).
USER_LOGGED_EVENTS: tuple[type[Struct], ...] = tuple(
    _user_event(cls) for cls in SSE_EVENTS if cls not in (StateEvent, HeartbeatEvent)
)
USER_SSE_EVENTS: tuple[type[Struct], ...] = (UserStateEvent, *USER_LOGGED_EVENTS, HeartbeatEvent)
for _cls in USER_LOGGED_EVENTS:  # module attributes like the written ones (the document's schemas come from here)
    globals()[_cls.__name__] = _cls
    _data_type = next(f.type for f in msgspec.structs.fields(_cls) if f.name == "data")
    globals()[_data_type.__name__] = _data_type
if TYPE_CHECKING:
    UserSseEvent = Struct
else:
    UserSseEvent = Union[USER_SSE_EVENTS]  # noqa: UP007 - a union made at run time


def decode_sse(event: str, data: bytes, event_id: str | None = None) -> SseEvent:
    """One received SSE message as its Struct (strict: unknown events or bad payloads raise)."""
    wire = {"event": event, "data": msgspec.json.decode(data)}
    if event_id is not None:
        wire["id"] = event_id
    result: SseEvent = msgspec.convert(wire, type=SseEvent)
    return result


# --- the operator console: /api/v1/admin/* (admins only) -------------------------------------
# (Bodies built by montage_orchestrator.admin, montage_ragnarok.admin and montage_gateway.admin.)
if TYPE_CHECKING:
    AdminStreamName = str
else:  # a stage name, or `results` (the orchestrator's input)
    AdminStreamName = Literal[(*pipeline.STAGES, "results")]


def _decimal_at_most(limit: int) -> str:
    """A regex of the decimal strings of at most ``len(str(limit))`` digits whose value is at
    most ``limit`` (leading zeros allowed): what Redis parses as one part of a stream id."""
    top = str(limit)
    width = len(top)
    longest = [f"{top[:i]}[0-{int(d) - 1}][0-9]{{{width - i - 1}}}" for i, d in enumerate(top) if d != "0"]
    return f"(?:[0-9]{{1,{width - 1}}}|{'|'.join((*longest, top))})"


# A stream entry id Redis accepts (``<ms>-<seq>``, each a 64-bit unsigned integer); the
# orchestrator checks dead-letter ids against this very pattern (400 otherwise).
ENTRY_ID_PATTERN = f"^{_decimal_at_most(2**64 - 1)}-{_decimal_at_most(2**64 - 1)}$"
EntryId = Annotated[str, Meta(pattern=ENTRY_ID_PATTERN, examples=["1700000000000-0"])]
# A search box's text (`q`): what montage_common.web.query_text accepts.
SearchText = Annotated[str, Meta(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


class AdminConsumer(Struct, kw_only=True):
    """A consumer of the stage's group, joined with the worker heartbeats."""

    name: str
    pending: int
    idle_seconds: float | None  # since its last interaction with the stream (None: not in the group yet)
    heartbeat_age_seconds: float | None  # since its last heartbeat (None: no live heartbeat)
    alive: bool | None  # a live heartbeat (None for the results stream: the orchestrator has none)


class AdminQueue(Struct, kw_only=True):
    """One stream and its consumer group; throughput and p95 over the window (stages only)."""

    name: str
    stream: str
    group: str
    length: int
    waiting: int  # not yet delivered to the group (its lag)
    oldest_waiting_seconds: float | None
    pending: int  # delivered, not acknowledged: in flight
    oldest_pending_seconds: float | None
    delayed: int  # retries waiting for their backoff
    dead_letters: int
    consumers: list[AdminConsumer]
    workers_alive: int | None
    completed: int = 0  # finished attempts in the window
    failed: int = 0
    throughput_per_minute: float = 0.0
    p95_seconds: float | None = None


class AdminQueues(Struct, kw_only=True):
    namespace: str
    generated_at: Timestamp
    window_seconds: int
    stages: list[AdminQueue]
    results: AdminQueue
    delayed_total: int


class AdminDeadLetter(Struct, kw_only=True):
    stream: str
    entry_id: str
    message_id: str
    code: str
    error: str
    attempts: int
    history: list[str]
    dead_at: Timestamp
    job_id: str | None
    user_id: str | None
    dispatch: int | None
    job_status: JobStatus | None


class AdminDeadLetters(Struct, kw_only=True):
    dead_letters: list[AdminDeadLetter]


class AdminRetried(Struct, kw_only=True):
    """A retried dead letter: its stage re-dispatched (`retried`) or put back on the results stream (`requeued`)."""

    entry_id: str
    outcome: Literal["retried", "requeued"]
    job_id: str | None = None
    job_status: JobStatus | None = None
    new_entry_id: str | None = None


class AdminRetryOutcome(Struct, kw_only=True):
    entry_id: str
    outcome: Literal["retried", "requeued", "conflict", "not_found"]
    job_id: str | None = None
    job_status: JobStatus | None = None
    new_entry_id: str | None = None
    reason: str | None = None


class AdminRetryAll(Struct, kw_only=True):
    stream: str
    retried: int
    skipped: int
    outcomes: list[AdminRetryOutcome]


class AdminDeleted(Struct, kw_only=True):
    entry_id: str
    outcome: Literal["deleted"]


class AdminJob(Struct, kw_only=True):
    job_id: JobId
    user_id: str
    status: JobStatus
    current_stage: str | None
    progress: Progress
    total_cost: Money
    estimated_cost: Money
    video_key: str | None
    error_message: str | None
    error_code: ErrorCode | None
    created_at: Timestamp
    updated_at: Timestamp
    completed_at: Timestamp | None
    files_expire_at: Timestamp | None
    files_cleaned_at: Timestamp | None


class AdminJobs(Struct, kw_only=True):
    jobs: list[AdminJob]
    total: int
    limit: int
    offset: int


class AdminJobFull(AdminJob, kw_only=True):
    user_prompt: str
    audio_filename: str
    audio_duration: float
    cost_limit: Money
    started_at: Timestamp | None
    deadline_at: Timestamp | None


class AdminStage(Struct, kw_only=True):
    stage: str
    status: StageStatus
    dispatch: int
    attempts: int
    started_at: Timestamp | None
    completed_at: Timestamp | None
    duration_seconds: float | None
    error: str | None
    metadata: dict[str, Any]


class AdminEvent(Struct, kw_only=True):
    id: str
    at: Timestamp
    event: str
    data: dict[str, Any]


class AdminCost(Struct, kw_only=True):
    stage: str
    api_name: str
    call_id: str
    cost: Money
    created_at: Timestamp


class AdminJobError(Struct, kw_only=True):
    where: str
    code: ErrorCode | None
    message: str


class AdminFile(Struct, kw_only=True):
    key: str
    size: int
    modified_at: Timestamp


class AdminAction(Struct, kw_only=True):
    """One entry of the action log: who did what to which target, and what came of it."""

    id: int
    actor: str
    action: str
    target: str
    job_id: str | None
    outcome: Literal["done", "not_found", "conflict"]
    detail: dict[str, Any]
    request_id: str | None
    created_at: Timestamp


class AdminActions(Struct, kw_only=True):
    actions: list[AdminAction]


class WebhookState(enum.StrEnum):
    """Where a webhook delivery stands: attempts go on, a 2xx came back, or its retries ran out."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


WEBHOOK_ID_PATTERN = r"^msg_[0-9a-f]{32}$"
WebhookId = Annotated[
    str, Meta(pattern=WEBHOOK_ID_PATTERN, description="A delivery's `webhook-id`", examples=["msg_" + "0" * 32])
]


class AdminWebhookDelivery(Struct, kw_only=True):
    """One webhook delivery of a job (the outbox row): its id is the `webhook-id` of every attempt."""

    webhook_id: WebhookId
    job_id: JobId
    url: str
    event_type: WebhookEventType
    state: Annotated[
        WebhookState,
        Meta(description="pending: attempts go on; delivered: a 2xx came back; failed: retries ran out"),
    ]
    attempts: int
    last_status: Annotated[int | None, Meta(description="The receiver's last HTTP status (null: no answer)")]
    last_error: str | None
    last_attempt_at: Timestamp | None
    next_attempt_at: Annotated[Timestamp | None, Meta(description="While pending: when it is tried next")]
    delivered_at: Timestamp | None
    created_at: Annotated[Timestamp, Meta(description="When the event happened (the job became final)")]


class AdminWebhookDeliveries(Struct, kw_only=True):
    deliveries: list[AdminWebhookDelivery]


class AdminJobDetail(Struct, kw_only=True):
    job: AdminJobFull
    stages: list[AdminStage]
    events: list[AdminEvent]
    costs: list[AdminCost]
    errors: list[AdminJobError]
    dead_letters: list[AdminDeadLetter]
    files: list[AdminFile]
    actions: list[AdminAction]
    cancellable: bool
    webhooks: Annotated[
        list[AdminWebhookDelivery], Meta(description="The job's webhook deliveries (none without `webhook_url`)")
    ] = []


class AdminJobDeleted(Struct, kw_only=True):
    """The console's delete: the job is gone (`already_deleted`: it was before this call)."""

    job_id: JobId
    outcome: Literal["deleted", "already_deleted"]
    files_deleted: Annotated[int, Meta(ge=0, description="Stored objects of the job deleted by this call")]


class AdminNexusJob(Struct, kw_only=True):
    job_id: str
    user_id: str
    workflow_id: str
    kind: str
    business_name: str
    status: JobStatus
    trace_id: str
    video_url: str | None
    error: str | None
    poll_attempts: int
    lease_owner: str | None
    cost_usd: float | None
    last_polled_at: Timestamp | None
    next_poll_at: Timestamp | None
    event_published_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
    completed_at: Timestamp | None


class AdminNexusJobs(Struct, kw_only=True):
    jobs: list[AdminNexusJob]
    total: int
    limit: int
    offset: int
    counts: dict[str, int]


class AdminMe(Struct, kw_only=True):
    user_id: str
    admin: bool
    claim: str
    namespace: str
