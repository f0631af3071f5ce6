"""DEVELOPMENT STAND-IN for RAGNAROK — not the real service.

A fake of the API in docs/ragnarok-contract.md for tests and the local stack:

    python -m montage_dev.fakes.ragnarok --port 8001 [--step-seconds 2] [--daily-limit 3]

- ``POST /api/v1/workflows`` validates its input (400), enforces a daily limit per
  ``business_name`` (429 with ``Retry-After``) and answers ``{"workflow_id", "status": "queued"}``.
- ``GET /api/v1/workflows/{id}``: ``queued`` for one step, ``processing`` for the next, then
  ``completed`` (or ``failed`` when submitted with ``"simulate_failure": true``).
- ``POST /_control`` ``{"mode": "ok"|"503"|"429"|"500"|"malformed"|"refuse"|"hang", "step_seconds",
  "poll_delay_seconds", "serve_videos", "cost_usd", "cost_usd_range", "seed", "fail_workflows"}``
  switches behaviour (``cost_usd``: what every completed workflow costs; ``cost_usd_range``
  ``[low, high]``: each new workflow's price is drawn uniformly from it, to the cent, from a
  generator seeded by ``seed``; ``null`` goes back to ``cost_usd``): ``503``/``429`` answer
  every API call so (with ``Retry-After: 1``), ``500`` a bare 500, ``malformed`` a truncated JSON
  body, ``refuse`` refuses submissions (400, content policy), ``hang`` holds every call. With
  ``serve_videos`` (or ``--serve-videos``) a completed workflow's ``video_url`` is a real MP4 the
  fake serves at ``/videos/<id>.mp4`` (rendered by ffmpeg at the submitted ``width``, ``height``,
  ``fps`` and ``duration_seconds``) instead of an ``s3://`` URL. ``GET /_stats`` reports
  submissions (with their bodies) and polls, including the most polls of one workflow ever in
  flight at once and which replicas (``X-Montage-Replica``) polled it.

Importable too: :func:`create_app` returns the application and its :class:`FakeRagnarok` state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from montage_dev.fakes.media import pattern_mp4
from montage_dev.fakes.serving import add_test_routes, arguments, serve

STAND_IN = {"X-Development-Stand-In": "ragnarok"}
MODES = ("ok", "503", "429", "500", "malformed", "refuse", "hang")


@dataclass
class Workflow:
    workflow_id: str
    business_name: str
    created: float
    fail: bool
    trace_id: str
    body: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # where this fake was reached (the base of a served video_url)
    cost_usd: float | None = None  # its own price (cost_usd_range), else the fake's cost_usd


@dataclass
class FakeRagnarok:
    step_seconds: float = 2.0
    daily_limit: int = 3
    poll_delay_seconds: float = 0.0
    hang_seconds: float = 300.0
    mode: str = "ok"
    serve_videos: bool = False
    fail_workflows: bool = False  # every new workflow fails, as "simulate_failure" makes one fail
    cost_usd: float = 2.64
    cost_usd_range: tuple[float, float] | None = None  # each workflow priced at random within it
    rng: random.Random = field(default_factory=random.Random)
    videos: dict[str, bytes] = field(default_factory=dict)
    workflows: dict[str, Workflow] = field(default_factory=dict)
    per_business: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    submissions: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    polls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    pollers: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    trace_ids: list[str] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def status_of(self, wf: Workflow) -> dict[str, Any]:
        steps = (time.monotonic() - wf.created) / self.step_seconds if self.step_seconds > 0 else 99
        body: dict[str, Any] = {
            "workflow_id": wf.workflow_id,
            "status": "queued",
            "video_url": None,
            "cost_usd": None,
            "quality_score": None,
            "error": None,
        }
        if steps >= 2:
            if wf.fail:
                body.update(status="failed", error="Render failed (simulated)")
            else:
                url = f"s3://commercials/1080p/{wf.workflow_id}.mp4"
                if self.serve_videos and wf.origin:
                    url = f"{wf.origin}/videos/{wf.workflow_id}.mp4"
                cost = self.cost_usd if wf.cost_usd is None else wf.cost_usd
                body.update(status="completed", video_url=url, cost_usd=cost, quality_score=0.88)
        elif steps >= 1:
            body["status"] = "processing"
        return body

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "cost_usd_range": self.cost_usd_range,
            "submissions": self.submissions,
            "workflows": len(self.workflows),
            "rejected": dict(self.rejected),
            "polls": dict(self.polls),
            "max_concurrent_polls": max(self.max_in_flight.values(), default=0),
            "max_in_flight": dict(self.max_in_flight),
            "pollers": {k: sorted(v) for k, v in self.pollers.items()},
            "trace_ids": self.trace_ids[-200:],
            "submitted": [
                {"workflow_id": wf.workflow_id, "trace_id": wf.trace_id, "body": wf.body, "cost_usd": wf.cost_usd}
                for wf in list(self.workflows.values())[-200:]
            ],
        }


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": detail}, status=status, headers={**STAND_IN, **(headers or {})})


def _seconds_to_utc_midnight() -> int:
    now = dt.datetime.now(dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


def _validate(body: object) -> str | None:
    if not isinstance(body, dict):
        return "Body must be a JSON object"
    name = body.get("business_name")
    if not isinstance(name, str) or not name.strip():
        return "business_name is required"
    if len(name) > 200:
        return "business_name must be at most 200 characters"
    if body.get("industry") is not None and not isinstance(body["industry"], str):
        return "industry must be a string"
    duration = body.get("duration_seconds")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float) or not 5 <= duration <= 120
    ):
        return "duration_seconds must be a number between 5 and 120"
    if body.get("enrichment") is not None and not isinstance(body["enrichment"], dict):
        return "enrichment must be an object"
    return None


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return min(high, max(low, float(value))) if ok else default  # type: ignore[arg-type]


async def _render(body: dict[str, Any]) -> bytes:
    w = int(_number(body, "width", 320, 16, 1920)) // 2 * 2
    h = int(_number(body, "height", 180, 16, 1080)) // 2 * 2
    fps = int(_number(body, "fps", 24, 1, 60))
    seconds = _number(body, "duration_seconds", 5, 1, 120)
    return await pattern_mp4(w, h, fps, seconds)


def create_app(state: FakeRagnarok | None = None) -> tuple[web.Application, FakeRagnarok]:
    fake = state or FakeRagnarok()
    app = web.Application()

    async def gate(request: web.Request) -> web.Response | None:
        """The 503/hang switch, applied to every API call."""
        if request.headers.get("X-Trace-ID"):
            fake.trace_ids.append(request.headers["X-Trace-ID"])
        if fake.mode == "503":
            return _error(503, "RAGNAROK temporarily unavailable", {"Retry-After": "1"})
        if fake.mode == "429":
            return _error(429, "Too many requests", {"Retry-After": "1"})
        if fake.mode == "500":
            return web.Response(status=500, text="Internal Server Error", headers=STAND_IN)
        if fake.mode == "malformed":
            return web.Response(text='{"workflow_id": "', content_type="application/json", headers=STAND_IN)
        if fake.mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fake.released.wait(), fake.hang_seconds)
            return _error(503, "RAGNAROK temporarily unavailable", {"Retry-After": "1"})
        return None

    async def submit(request: web.Request) -> web.Response:
        if (blocked := await gate(request)) is not None:
            return blocked
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            fake.rejected["400"] += 1
            return _error(400, "Body is not valid JSON")
        if problem := _validate(body):
            fake.rejected["400"] += 1
            return _error(400, problem)
        if fake.mode == "refuse":
            fake.rejected["400"] += 1
            return _error(400, "Request rejected by the content policy")
        name = body["business_name"].strip()
        day = dt.datetime.now(dt.UTC).date().isoformat()
        if fake.per_business[(name, day)] >= fake.daily_limit:
            fake.rejected["429"] += 1
            return _error(
                429,
                f"Daily limit ({fake.daily_limit} workflows) exceeded",
                {"Retry-After": str(_seconds_to_utc_midnight())},
            )
        fake.per_business[(name, day)] += 1
        fake.submissions += 1
        wf = Workflow(
            workflow_id=str(uuid.uuid4()),
            business_name=name,
            created=time.monotonic(),
            fail=bool(body.get("simulate_failure")) or fake.fail_workflows,
            trace_id=request.headers.get("X-Trace-ID", ""),
            body=body,
            origin=f"http://{request.host}",
            cost_usd=round(fake.rng.uniform(*fake.cost_usd_range), 2) if fake.cost_usd_range else None,
        )
        fake.workflows[wf.workflow_id] = wf
        return web.json_response({"workflow_id": wf.workflow_id, "status": "queued"}, status=201, headers=STAND_IN)

    async def get_workflow(request: web.Request) -> web.Response:
        workflow_id = request.match_info["workflow_id"]
        fake.polls[workflow_id] += 1
        fake.pollers[workflow_id].add(request.headers.get("X-Montage-Replica", "unknown"))
        fake.in_flight[workflow_id] += 1
        fake.max_in_flight[workflow_id] = max(fake.max_in_flight[workflow_id], fake.in_flight[workflow_id])
        try:
            if fake.poll_delay_seconds > 0:
                await asyncio.sleep(fake.poll_delay_seconds)
            if (blocked := await gate(request)) is not None:
                return blocked
            wf = fake.workflows.get(workflow_id)
            if wf is None:
                return _error(404, f"Workflow {workflow_id} not found")
            return web.json_response(fake.status_of(wf), headers=STAND_IN)
        finally:
            fake.in_flight[workflow_id] -= 1

    async def video(request: web.Request) -> web.StreamResponse:
        """A completed workflow's clip: ffmpeg's test pattern at the submitted size, rate and length."""
        wf = fake.workflows.get(request.match_info["workflow_id"])
        if wf is None or not fake.serve_videos:
            return _error(404, "No such video")
        if wf.workflow_id not in fake.videos:
            fake.videos[wf.workflow_id] = await _render(wf.body)
        return web.Response(body=fake.videos[wf.workflow_id], content_type="video/mp4", headers=STAND_IN)

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        mode = body.get("mode", fake.mode)
        if mode not in MODES:
            return _error(400, f"mode must be one of {MODES}")
        fake.mode = mode
        if mode == "hang":
            fake.released.clear()
        else:
            fake.released.set()
        for name in ("step_seconds", "poll_delay_seconds", "hang_seconds"):
            if name in body:
                setattr(fake, name, float(body[name]))
        if "daily_limit" in body:
            fake.daily_limit = int(body["daily_limit"])
        if "serve_videos" in body:
            fake.serve_videos = bool(body["serve_videos"])
        if "fail_workflows" in body:
            fake.fail_workflows = bool(body["fail_workflows"])
        if "cost_usd" in body:
            fake.cost_usd = float(body["cost_usd"])
        if "cost_usd_range" in body:
            span = body["cost_usd_range"]
            fake.cost_usd_range = None if span is None else (float(span[0]), float(span[1]))
        if "seed" in body:
            fake.rng.seed(body["seed"])
        return web.json_response(fake.stats(), headers=STAND_IN)

    async def release_hangs(app: web.Application) -> None:
        fake.released.set()

    app.on_shutdown.append(release_hangs)
    app.router.add_post("/api/v1/workflows", submit)
    app.router.add_get("/api/v1/workflows/{workflow_id}", get_workflow)
    app.router.add_get("/videos/{workflow_id}.mp4", video)
    add_test_routes(app, "ragnarok", control=control, stats=fake.stats)
    return app, fake


def main(argv: list[str] | None = None) -> None:
    parser = arguments("DEVELOPMENT STAND-IN for RAGNAROK (see docs/ragnarok-contract.md)", 8001)
    parser.add_argument("--step-seconds", type=float, default=2.0, help="time in queued, then in processing")
    parser.add_argument("--daily-limit", type=int, default=3, help="workflows per business_name per UTC day")
    parser.add_argument("--poll-delay-seconds", type=float, default=0.0, help="added latency of status calls")
    parser.add_argument("--serve-videos", action="store_true", help="completed workflows get a real, served MP4")
    args = parser.parse_args(argv)
    state = FakeRagnarok(
        step_seconds=args.step_seconds,
        daily_limit=args.daily_limit,
        poll_delay_seconds=args.poll_delay_seconds,
        serve_videos=args.serve_videos,
    )
    app, _ = create_app(state)
    serve(app, "ragnarok", "RAGNAROK", args.host, args.port)


if __name__ == "__main__":
    main()
