"""DEVELOPMENT STAND-IN for an OpenAI-compatible API — not the real service.

The three endpoints Montage's providers call, in OpenAI's wire format (docs/providers.md):

- ``POST /v1/chat/completions``: a ``chat.completion`` with ``usage``; with ``response_format``
  ``json_schema`` the content is a JSON object of that schema, its values mirrored from the
  user message's JSON where the keys match (ids and indexes come back as sent).
- ``POST /v1/audio/transcriptions`` (multipart): ``verbose_json`` with ``duration`` (read from
  the audio's header), ``segments``, ``words`` and ``usage {"type": "duration", "seconds"}``.
- ``POST /v1/images/generations``: ``data[0].b64_json``, a PNG of the requested ``size``;
  ``response_format`` is refused for ``gpt-image*`` models as OpenAI refuses it.

    python -m montage_dev.fakes.openai --port 8003 [--api-key KEY]

Test controls (not part of any contract):

- ``POST /_control {"mode": "ok"|"429"|"500"|"hang"|"malformed"|"refuse", "endpoints": ["chat",
  "transcriptions", "images"], "times": N, "retry_after": 1, "hang_seconds": 30, "usage":
  {"prompt_tokens": …, "completion_tokens": …}}``: the next ``times`` calls (every call when
  absent) of those endpoints (all when absent) fail that way: 429 with ``Retry-After``, 500, no
  answer for ``hang_seconds``, a truncated JSON body, or a content-policy refusal (chat: a
  ``refusal`` message; images and transcriptions: 400 ``content_policy_violation``). ``usage``
  replaces the token counts chat completions report (``null`` restores counting).
- ``GET /_stats``: calls per endpoint and every request (path, auth header, body or form fields,
  outcome, the usage or units reported); ``POST /_reset`` forgets requests and controls.

Importable too: :func:`create_app` returns the application and its :class:`FakeOpenAI` state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import math
import struct
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from montage_dev.fakes.serving import add_test_routes, arguments, bearer_ok, serve

STAND_IN = {"X-Development-Stand-In": "openai"}
ENDPOINTS = ("chat", "transcriptions", "images")
MODES = ("ok", "429", "500", "hang", "malformed", "refuse")
_LYRIC_TEXT = (
    "neon rain is falling on the empty street tonight I keep on dancing in the flicker of the signs "
    "every heartbeat is a drum and every light a song we keep on moving till the morning comes"
)
LYRICS = _LYRIC_TEXT.split(" ")


@dataclass
class Rule:
    mode: str
    remaining: int | None  # None: until changed


@dataclass
class FakeOpenAI:
    api_key: str = ""  # when set, other keys get 401
    rules: dict[str, Rule] = field(default_factory=dict)
    retry_after: int = 1
    hang_seconds: float = 30.0
    usage: dict[str, int] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDPOINTS, 0))
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, endpoint: str) -> str:
        """The mode of this call (consuming one of a counted rule)."""
        rule = self.rules.get(endpoint)
        if rule is None:
            return "ok"
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining <= 0:
                del self.rules[endpoint]
        return rule.mode

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "rules": {k: {"mode": r.mode, "remaining": r.remaining} for k, r in self.rules.items()},
            "requests": self.requests[-500:],
        }


def _error(
    status: int, message: str, kind: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers={**STAND_IN, **(headers or {})})


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


# --- chat completions -----------------------------------------------------------------
def _instance(schema: dict[str, Any], sample: Any, parent: Any = None, name: str = "") -> Any:
    """A value of ``schema``, mirroring ``sample`` (the user's JSON at the same place) where it fits."""
    kind = schema.get("type")
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        src = sample if isinstance(sample, dict) else {}
        lists = [v for v in src.values() if isinstance(v, list)]
        out = {}
        for k, v in props.items():
            mirrored = src.get(k)
            if v.get("type") == "array" and not isinstance(mirrored, list) and lists:
                mirrored = lists[0]  # e.g. "prompts" answered for the "clips" sent
            out[k] = _instance(v, mirrored, src, k)
        return out
    if kind == "array":
        items = sample if isinstance(sample, list) else [None]
        return [_instance(schema.get("items", {}), x, None, name) for x in items]
    if kind == "integer":
        return sample if isinstance(sample, int) and not isinstance(sample, bool) else 0
    if kind == "number":
        return sample if isinstance(sample, int | float) and not isinstance(sample, bool) else 0.0
    if kind == "boolean":
        return bool(sample)
    if isinstance(sample, str) and sample:
        return sample if name == "id" else f"Cinematic, vivid: {sample[:400]}"
    if isinstance(parent, dict):
        text = next((v for v in parent.values() if isinstance(v, str) and v), "")
        if text:
            return f"Cinematic, vivid: {text[:400]}"
    return f"fake {name or 'text'}"


def _chat_content(body: dict[str, Any]) -> str:
    messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    user = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    try:
        sample = json.loads(user) if isinstance(user, str) else None
    except ValueError:
        sample = None
    fmt = body.get("response_format") or {}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        return json.dumps(_instance(schema, sample))
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return json.dumps({"text": "fake answer"})
    return "A fake answer."


def _valid_chat(body: object) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema")):
        return "Invalid 'response_format'"
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        js = fmt.get("json_schema")
        if not isinstance(js, dict) or not js.get("name") or not isinstance(js.get("schema"), dict):
            return "'response_format.json_schema' needs a name and a schema"
    return None


# --- images -----------------------------------------------------------------------------
def png(width: int, height: int, seed: str) -> bytes:
    """A width x height RGB PNG: a vertical gradient between two colours taken from ``seed``."""
    digest = hashlib.sha256(seed.encode()).digest()
    top, bottom = digest[:3], digest[3:6]
    rows = []
    for y in range(height):
        t = y / max(1, height - 1)
        pixel = bytes(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        rows.append(b"\x00" + pixel * width)
    raw = zlib.compress(b"".join(rows), 6)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _size(value: object) -> tuple[int, int] | None:
    if value in (None, "auto"):
        return 1024, 1024
    try:
        w, h = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        return None
    return (w, h) if 16 <= w <= 3840 and 16 <= h <= 3840 else None


# --- transcriptions -------------------------------------------------------------------------
def _duration(data: bytes) -> float:
    try:
        import mutagen

        info = mutagen.File(io.BytesIO(data))
        if info is not None and info.info is not None and info.info.length:
            return round(float(info.info.length), 3)
    except Exception:  # an unreadable file: a fixed length, as a server guessing would
        pass
    return 10.0


def _transcription(duration: float) -> dict[str, Any]:
    words: list[dict[str, Any]] = []
    t = 1.0
    i = 0
    while t + 0.35 < duration and i < 2000:
        words.append({"word": LYRICS[i % len(LYRICS)], "start": round(t, 2), "end": round(t + 0.35, 2)})
        t += 0.5 if (i + 1) % 6 else 1.5  # a pause after every six words
        i += 1
    segments = []
    for n, k in enumerate(range(0, len(words), 6)):
        group = words[k : k + 6]
        segments.append(
            {
                "id": n,
                "seek": 0,
                "start": group[0]["start"],
                "end": group[-1]["end"],
                "text": " " + " ".join(w["word"] for w in group),
                "tokens": [50364 + j for j in range(len(group))],
                "temperature": 0.0,
                "avg_logprob": -0.25,
                "compression_ratio": 1.2,
                "no_speech_prob": 0.01,
            }
        )
    return {
        "task": "transcribe",
        "language": "english",
        "duration": duration,
        "text": " ".join(w["word"] for w in words),
        "words": words,
        "segments": segments,
        "usage": {"type": "duration", "seconds": math.ceil(duration)},
    }


def create_app(state: FakeOpenAI | None = None) -> tuple[web.Application, FakeOpenAI]:
    fake = state or FakeOpenAI()
    app = web.Application(client_max_size=32 * 1024 * 1024)

    def record(request: web.Request, endpoint: str, body: Any, outcome: str, **extra: Any) -> dict[str, Any]:
        entry = {
            "endpoint": endpoint,
            "path": request.path,
            "authorization": request.headers.get("Authorization"),
            "body": body,
            "outcome": outcome,
            "at": time.time(),
            **extra,
        }
        fake.requests.append(entry)
        return entry

    async def failure(request: web.Request, endpoint: str, body: Any) -> web.StreamResponse | None:
        """The controlled failure of this call, or None to answer normally."""
        fake.calls[endpoint] += 1
        if not bearer_ok(request, fake.api_key):
            record(request, endpoint, body, "401")
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        mode = fake.take(endpoint)
        if mode in ("ok", "refuse"):
            return None
        record(request, endpoint, body, mode)
        if mode == "429":
            return _error(
                429,
                "Rate limit reached for requests. Please try again later.",
                "requests",
                "rate_limit_exceeded",
                {"Retry-After": str(fake.retry_after), "x-ratelimit-remaining-requests": "0"},
            )
        if mode == "500":
            return _error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        if mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fake.released.wait(), fake.hang_seconds)
            return _error(500, "The server had an error while processing your request.", "server_error", None)
        return web.Response(  # malformed: a truncated JSON body
            text='{"id": "broken", "object": "', content_type="application/json", headers=STAND_IN
        )

    async def mode_of(request: web.Request, endpoint: str, body: Any) -> tuple[web.StreamResponse | None, bool]:
        rule = fake.rules.get(endpoint)
        refusing = rule is not None and rule.mode == "refuse"
        blocked = await failure(request, endpoint, body)
        return blocked, refusing

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        blocked, refusing = await mode_of(request, "chat", body)
        if blocked is not None:
            return blocked
        if problem := _valid_chat(body):
            record(request, "chat", body, "400")
            return _error(400, problem, "invalid_request_error", None)
        assert isinstance(body, dict)
        prompt_text = "".join(str(m.get("content") or "") for m in body["messages"] if isinstance(m, dict))
        content = None if refusing else _chat_content(body)
        refusal = "I'm sorry, I can't assist with that request." if refusing else None
        usage = {
            "prompt_tokens": _tokens(prompt_text),
            "completion_tokens": _tokens(content or refusal or ""),
        }
        if fake.usage:
            usage.update({k: int(v) for k, v in fake.usage.items() if k in usage})
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        record(request, "chat", body, "refuse" if refusing else "ok", model=body["model"], usage=usage)
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": refusal, "annotations": []},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    **usage,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
                },
                "system_fingerprint": "fp_fake",
            },
            headers={**STAND_IN, "x-request-id": f"req_{uuid.uuid4().hex[:16]}"},
        )

    async def transcriptions(request: web.Request) -> web.StreamResponse:
        fields: dict[str, Any] = {}
        data = b""
        try:
            form = await request.post()
            for key in form:
                values = form.getall(key)
                for value in values:
                    if isinstance(value, web.FileField):
                        data = value.file.read()
                        fields[key] = {
                            "filename": value.filename,
                            "content_type": value.content_type,
                            "bytes": len(data),
                        }
                    elif key.endswith("[]"):
                        fields.setdefault(key, []).append(str(value))
                    else:
                        fields[key] = str(value)
        except ValueError:
            pass
        blocked, refusing = await mode_of(request, "transcriptions", fields)
        if blocked is not None:
            return blocked
        if not data or not fields.get("model"):
            record(request, "transcriptions", fields, "400")
            return _error(400, "file and model are required", "invalid_request_error", None)
        if refusing:
            record(request, "transcriptions", fields, "refuse")
            return _error(400, "This audio was flagged by our safety system.", "invalid_request_error",
                          "content_policy_violation")  # fmt: skip
        answer = _transcription(_duration(data))
        record(request, "transcriptions", fields, "ok", model=fields["model"], usage=answer["usage"],
               duration=answer["duration"], words=len(answer["words"]))  # fmt: skip
        if fields.get("response_format") != "verbose_json":
            return web.json_response({"text": answer["text"], "usage": answer["usage"]}, headers=STAND_IN)
        return web.json_response(answer, headers=STAND_IN)

    async def images(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        blocked, refusing = await mode_of(request, "images", body)
        if blocked is not None:
            return blocked
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or not body["prompt"]:
            record(request, "images", body, "400")
            return _error(400, "'prompt' is required", "invalid_request_error", None)
        model = str(body.get("model") or "")
        if model.startswith(("gpt-image", "chatgpt-image")) and "response_format" in body:
            record(request, "images", body, "400")
            return _error(400, "Unknown parameter: 'response_format'.", "invalid_request_error", "unknown_parameter")
        size = _size(body.get("size"))
        if size is None:
            record(request, "images", body, "400")
            return _error(400, f"Invalid value for 'size': {body.get('size')!r}.", "invalid_request_error", None)
        if refusing:
            record(request, "images", body, "refuse")
            return _error(400, "Your request was rejected as a result of our safety system.",
                          "image_generation_user_error", "content_policy_violation")  # fmt: skip
        n = int(body.get("n") or 1)
        image = base64.b64encode(png(size[0], size[1], body["prompt"])).decode()
        record(request, "images", body, "ok", model=model, images=n)
        return web.json_response(
            {
                "created": int(time.time()),
                "data": [{"b64_json": image, "revised_prompt": body["prompt"]} for _ in range(n)],
                "size": f"{size[0]}x{size[1]}",
                "quality": body.get("quality", "auto"),
                "output_format": "png",
                "usage": {
                    "input_tokens": _tokens(body["prompt"]),
                    "output_tokens": 272 * n,
                    "total_tokens": _tokens(body["prompt"]) + 272 * n,
                    "input_tokens_details": {"text_tokens": _tokens(body["prompt"]), "image_tokens": 0},
                },
            },
            headers=STAND_IN,
        )

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        mode = body.get("mode")
        if mode is not None:
            if mode not in MODES:
                return web.json_response({"detail": f"mode must be one of {MODES}"}, status=400)
            endpoints = body.get("endpoints") or list(ENDPOINTS)
            times = body.get("times")
            for endpoint in endpoints:
                if endpoint not in ENDPOINTS:
                    return web.json_response({"detail": f"endpoints are {ENDPOINTS}"}, status=400)
                if mode == "ok":
                    fake.rules.pop(endpoint, None)
                else:
                    fake.rules[endpoint] = Rule(mode, int(times) if times is not None else None)
            if mode == "hang":
                fake.released.clear()
            elif not any(r.mode == "hang" for r in fake.rules.values()):
                fake.released.set()
        if "retry_after" in body:
            fake.retry_after = int(body["retry_after"])
        if "hang_seconds" in body:
            fake.hang_seconds = float(body["hang_seconds"])
        if "usage" in body:
            fake.usage = body["usage"] or None
        return web.json_response(fake.stats(), headers=STAND_IN)

    async def reset(request: web.Request) -> web.Response:
        fake.rules.clear()
        fake.requests.clear()
        fake.calls = dict.fromkeys(ENDPOINTS, 0)
        fake.usage = None
        fake.released.set()
        return web.json_response(fake.stats(), headers=STAND_IN)

    async def release_hangs(app: web.Application) -> None:
        fake.released.set()

    app.on_shutdown.append(release_hangs)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/images/generations", images)
    add_test_routes(app, "openai", control=control, reset=reset, stats=fake.stats)
    return app, fake


def main(argv: list[str] | None = None) -> None:
    args = arguments("DEVELOPMENT STAND-IN for an OpenAI-compatible API", 8003, api_key=True).parse_args(argv)
    app, _ = create_app(FakeOpenAI(api_key=args.api_key))
    serve(app, "openai", "an OpenAI-compatible API", args.host, args.port, "/v1")


if __name__ == "__main__":
    main()
