"""DEVELOPMENT STAND-IN for Runway's API (image-to-video) — not the real service.

The part of Runway's documented HTTP API that Montage's ``VIDEO_PROVIDER=runway`` speaks through
the official ``runwayml`` SDK (point the SDK's ``base_url`` / ``RUNWAY_BASE_URL`` here):

- every ``/v1`` call needs ``Authorization: Bearer <key>`` (401 ``{"error"}`` otherwise, when
  ``--api-key`` is set) and ``X-Runway-Version: 2024-11-06`` (400 without it or with another);
- ``POST /v1/image_to_video`` ``{"model", "promptImage" (an https URL or a base64 ``data:image/…``
  URI of at most 5 MB), "promptText" (≤ 1000 characters), "ratio" (one of the model's), "duration"
  (2–10 s), "seed"?}`` → ``{"id", "estimatedCost": {"credits"}}`` (400 ``{"error", "issues"}``
  for a bad body);
- ``GET /v1/tasks/{id}``: ``PENDING`` for one step, ``RUNNING`` (with ``progress``) for the next,
  then ``SUCCEEDED`` with ``output`` (one URL of a real MP4 this fake serves at
  ``/_outputs/<id>.mp4``: ffmpeg's test pattern for the task's duration) and ``cost.credits``
  (``credits_per_second`` × duration), or ``FAILED`` with ``failure``, ``failureCode`` and
  ``cost.credits`` 0; a task beyond the account's concurrency (``--concurrency``) waits
  ``THROTTLED`` until one ends; ``DELETE /v1/tasks/{id}`` cancels (204); unknown id 404.

    python -m montage_dev.fakes.runway --port 8004 [--api-key KEY] [--step-seconds 1]

Test controls (not part of the contract):

- ``POST /_control {"mode": "ok"|"429"|"500", "endpoints": ["create", "tasks"], "times": N,
  "retry_after": s, "grace_seconds": s, "step_seconds": s, "credits_per_second": n, "fail_tasks": N,
  "failure_code": "SAFETY.INPUT.TEXT", "failure": "…"}``: the next ``times`` calls of those
  endpoints (``create`` when absent) answer 429 with ``Retry-After`` (``{"error"}`` body) or 500;
  the next ``fail_tasks`` tasks end ``FAILED`` with that code;
- ``GET /_stats``: every task (its body without the image, status, credits), creates and polls,
  the most tasks ever open at once (created and their end not yet seen by a poll), every 429
  answered (when, its ``Retry-After``) and every API call received inside a 429's
  ``Retry-After`` (``backoff_violations``; calls within ``grace_seconds`` of the 429, 0.25 s by
  default, are calls already on their way, not counted); ``POST /_reset`` forgets everything.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from montage_dev.fakes.media import pattern_mp4
from montage_dev.fakes.serving import add_test_routes, arguments, bearer_ok, serve

STAND_IN = {"X-Development-Stand-In": "runway"}
API_VERSION = "2024-11-06"
MODELS = {"gen4_turbo", "gen4.5", "gen3a_turbo"}
RATIOS = {"1280:720", "720:1280", "1104:832", "832:1104", "960:960", "1584:672", "1280:768", "768:1280"}
MAX_IMAGE_BYTES = 5 * 1024 * 1024
GRACE_SECONDS = 0.25
OUTPUT_SIZE = {"1280:720": (320, 180), "720:1280": (180, 320)}  # rendered small: tests want speed


@dataclass
class Task:
    id: str
    body: dict[str, Any]
    created: float
    fail: tuple[str, str] | None = None  # (failure code, failure)
    cancelled: bool = False
    seen_final: bool = False  # a poll has returned its end (the client knows it is over)
    started: float | None = None  # left THROTTLED (the account had room)
    credits: int = 0


@dataclass
class FakeRunway:
    api_key: str = ""
    step_seconds: float = 1.0
    concurrency: int = 0  # the account's own cap: more tasks wait THROTTLED (0: none)
    credits_per_second: int = 5  # gen4_turbo
    mode: str = "ok"
    endpoints: set[str] = field(default_factory=lambda: {"create"})
    times: int | None = None
    retry_after: float = 1.0
    grace_seconds: float = GRACE_SECONDS  # calls this soon after a 429 were already on their way
    fail_tasks: int = 0
    failure_code: str = "SAFETY.INPUT.TEXT"
    failure: str = "The prompt text did not pass content moderation."
    tasks: dict[str, Task] = field(default_factory=dict)
    videos: dict[str, bytes] = field(default_factory=dict)
    creates: int = 0
    polls: int = 0
    downloads: int = 0
    max_open: int = 0
    throttled: list[dict[str, float]] = field(default_factory=list)  # the 429s answered
    violations: list[dict[str, Any]] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)

    def open_tasks(self) -> int:
        return sum(1 for t in self.tasks.values() if not t.seen_final)

    def status(self, task: Task, now: float) -> dict[str, Any]:
        base = {"id": task.id, "createdAt": _iso(task.created)}
        duration = int(task.body.get("duration") or 5)
        estimated = {"credits": self.credits_per_second * duration}
        if task.cancelled:
            return {**base, "status": "CANCELLED", "cost": {"credits": 0}}
        if task.started is None:
            running = sum(1 for t in self.tasks.values() if t.started is not None and not self._ended(t, now))
            if self.concurrency and running >= self.concurrency:
                return {**base, "status": "THROTTLED", "estimatedCost": estimated}
            task.started = now
        age = now - task.started
        if age < self.step_seconds:
            return {**base, "status": "PENDING", "estimatedCost": estimated}
        if age < 2 * self.step_seconds:
            progress = round((age - self.step_seconds) / max(self.step_seconds, 1e-6), 2)
            return {**base, "status": "RUNNING", "estimatedCost": estimated, "progress": progress}
        if task.fail is not None:
            code, reason = task.fail
            return {**base, "status": "FAILED", "failure": reason, "failureCode": code, "cost": {"credits": 0}}
        task.credits = self.credits_per_second * duration
        return {**base, "status": "SUCCEEDED", "output": [], "cost": {"credits": task.credits}}

    def _ended(self, task: Task, now: float) -> bool:
        return task.cancelled or (task.started is not None and now - task.started >= 2 * self.step_seconds)

    def stats(self) -> dict[str, Any]:
        return {
            "creates": self.creates,
            "polls": self.polls,
            "downloads": self.downloads,
            "max_open": self.max_open,
            "open": self.open_tasks(),
            "throttled": self.throttled,
            "backoff_violations": self.violations,
            "rejected": self.rejected,
            "tasks": [
                {
                    "id": t.id,
                    "model": t.body.get("model"),
                    "promptText": t.body.get("promptText"),
                    "ratio": t.body.get("ratio"),
                    "duration": t.body.get("duration"),
                    "image_bytes": t.body.get("_image_bytes", 0),
                    "failed": t.fail is not None,
                    "credits": t.credits,
                    "created": t.created,
                }
                for t in self.tasks.values()
            ],
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers={**STAND_IN, **(headers or {})})


def _image_size(image: object) -> int | str:
    """The bytes of a data URI image, 0 for an https URL, or why it is refused."""
    if not isinstance(image, str) or not image:
        return "promptImage must be a non-empty string"
    if image.startswith("https://"):
        return 0
    if not image.startswith("data:image/") or ";base64," not in image:
        return "promptImage must be an HTTPS URL or a base64 data URI"
    try:
        data = base64.b64decode(image.split(";base64,", 1)[1], validate=True)
    except ValueError:
        return "promptImage is not valid base64"
    if len(data) > MAX_IMAGE_BYTES:
        return "promptImage is larger than 5MB"
    if not (data.startswith(b"\xff\xd8") or data.startswith(b"\x89PNG") or data[8:12] == b"WEBP"):
        return "promptImage is not a JPEG, PNG or WebP image"
    return len(data)


def _validate(body: object) -> tuple[str, list[str]] | dict[str, Any]:
    if not isinstance(body, dict):
        return "Invalid request body", ["body must be a JSON object"]
    issues: list[str] = []
    if body.get("model") not in MODELS:
        issues.append(f"model must be one of {sorted(MODELS)}")
    size = _image_size(body.get("promptImage"))
    if isinstance(size, str):
        issues.append(size)
    text = body.get("promptText", "")
    if not isinstance(text, str) or len(text) > 1000:
        issues.append("promptText must be a string of at most 1000 characters")
    if body.get("ratio") not in RATIOS:
        issues.append("ratio is not supported by this model")
    duration = body.get("duration", 5)
    if not isinstance(duration, int) or isinstance(duration, bool) or not 2 <= duration <= 10:
        issues.append("duration must be an integer from 2 to 10")
    if issues:
        return "Invalid request body", issues
    clean = {k: v for k, v in body.items() if k != "promptImage"}
    clean["_image_bytes"] = size
    return clean


def create_app(state: FakeRunway | None = None) -> tuple[web.Application, FakeRunway]:
    fake = state or FakeRunway()
    app = web.Application(client_max_size=8 * 1024 * 1024)

    def gate(request: web.Request, endpoint: str) -> web.Response | None:
        now = time.time()
        for t in fake.throttled:
            if t["at"] + fake.grace_seconds < now < t["at"] + t["retry_after"]:
                fake.violations.append({"at": now, "path": request.path, "after_429": round(now - t["at"], 3)})
                break
        if not bearer_ok(request, fake.api_key):
            fake.rejected["401"] = fake.rejected.get("401", 0) + 1
            return _error(401, "Invalid API key")
        if request.headers.get("X-Runway-Version") != API_VERSION:
            fake.rejected["version"] = fake.rejected.get("version", 0) + 1
            return _error(400, f"X-Runway-Version must be {API_VERSION}")
        if fake.mode != "ok" and endpoint in fake.endpoints and (fake.times is None or fake.times > 0):
            if fake.times is not None:
                fake.times -= 1
            if fake.mode == "429":
                fake.throttled.append({"at": now, "retry_after": fake.retry_after})
                return _error(429, "Too many requests", {"Retry-After": f"{fake.retry_after:g}"})
            return _error(500, "Internal error")
        return None

    async def create(request: web.Request) -> web.Response:
        if (refused := gate(request, "create")) is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        checked = _validate(body)
        if isinstance(checked, tuple):
            return _error(400, checked[0], issues=checked[1])
        fail = None
        if fake.fail_tasks > 0:
            fake.fail_tasks -= 1
            fail = (fake.failure_code, fake.failure)
        task = Task(id=str(uuid.uuid4()), body=checked, created=time.time(), fail=fail)
        fake.tasks[task.id] = task
        fake.creates += 1
        fake.max_open = max(fake.max_open, fake.open_tasks())
        credits = fake.credits_per_second * int(checked.get("duration") or 5)
        return web.json_response({"id": task.id, "estimatedCost": {"credits": credits}}, headers=STAND_IN)

    def task_of(request: web.Request) -> Task | web.Response:
        """The task the path names, or the answer to the call (the gate's refusal, or 404)."""
        if (refused := gate(request, "tasks")) is not None:
            return refused
        task = fake.tasks.get(request.match_info["task_id"])
        return _error(404, "Task not found") if task is None else task

    async def get_task(request: web.Request) -> web.Response:
        if isinstance(task := task_of(request), web.Response):
            return task
        fake.polls += 1
        body = fake.status(task, time.time())
        if body["status"] == "SUCCEEDED":
            if task.id not in fake.videos:
                w, h = OUTPUT_SIZE.get(str(task.body["ratio"]), (240, 240))
                fake.videos[task.id] = await pattern_mp4(w, h, 24, int(task.body.get("duration") or 5))
            body["output"] = [f"{request.scheme}://{request.host}/_outputs/{task.id}.mp4"]
        if body["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            task.seen_final = True
        return web.json_response(body, headers=STAND_IN)

    async def delete_task(request: web.Request) -> web.Response:
        if isinstance(task := task_of(request), web.Response):
            return task
        task.cancelled = task.seen_final = True
        return web.Response(status=204, headers=STAND_IN)

    async def output(request: web.Request) -> web.Response:
        video = fake.videos.get(request.match_info["task_id"])
        if video is None:
            return _error(404, "Not found")
        fake.downloads += 1
        return web.Response(body=video, content_type="video/mp4", headers=STAND_IN)

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        if "mode" in body:
            fake.mode = str(body["mode"])
            fake.endpoints = set(body.get("endpoints") or ["create"])
            fake.times = body.get("times")
        for name in ("retry_after", "step_seconds", "grace_seconds"):
            if name in body:
                setattr(fake, name, float(body[name]))
        for name in ("credits_per_second", "fail_tasks", "concurrency"):
            if name in body:
                setattr(fake, name, int(body[name]))
        for name in ("failure_code", "failure"):
            if name in body:
                setattr(fake, name, str(body[name]))
        return web.json_response(fake.stats(), headers=STAND_IN)

    async def reset(request: web.Request) -> web.Response:
        fresh = FakeRunway(api_key=fake.api_key, step_seconds=fake.step_seconds, concurrency=fake.concurrency)
        fake.__dict__.update(fresh.__dict__)
        return web.json_response({"ok": True}, headers=STAND_IN)

    app.router.add_post("/v1/image_to_video", create)
    app.router.add_get("/v1/tasks/{task_id}", get_task)
    app.router.add_delete("/v1/tasks/{task_id}", delete_task)
    app.router.add_get("/_outputs/{task_id}.mp4", output)
    add_test_routes(app, "runway", control=control, reset=reset, stats=fake.stats)
    return app, fake


def main(argv: list[str] | None = None) -> None:
    parser = arguments("DEVELOPMENT STAND-IN for Runway's image-to-video API", 8004, api_key=True)
    parser.add_argument("--step-seconds", type=float, default=1.0, help="time PENDING, then RUNNING")
    parser.add_argument("--concurrency", type=int, default=0, help="the account's own cap (THROTTLED beyond)")
    args = parser.parse_args(argv)
    state = FakeRunway(api_key=args.api_key, step_seconds=args.step_seconds, concurrency=args.concurrency)
    app, _ = create_app(state)
    serve(app, "runway", "Runway's API", args.host, args.port)


if __name__ == "__main__":
    main()
