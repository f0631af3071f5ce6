"""DEVELOPMENT STAND-IN for Trinity (enrichment) — not the real service.

    python -m montage_dev.fakes.trinity --port 8002

- ``POST /api/v1/enrich`` ``{"company_name", "industry", ...}`` → a deterministic enrichment object;
  400 without ``company_name``.
- ``POST /_control`` ``{"mode": "ok"|"503"|"hang"}``; ``GET /_stats`` counts calls.

Importable too: :func:`create_app` returns the application and its :class:`FakeTrinity` state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from montage_dev.fakes.serving import add_test_routes, arguments, serve

STAND_IN = {"X-Development-Stand-In": "trinity"}
MODES = ("ok", "503", "hang")


@dataclass
class FakeTrinity:
    mode: str = "ok"
    hang_seconds: float = 300.0
    calls: int = 0
    trace_ids: list[str] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "calls": self.calls}


def enrichment_for(company: str, industry: str | None) -> dict[str, Any]:
    digest = hashlib.sha256(f"{company}|{industry}".encode()).hexdigest()
    tones = ("bold", "warm", "playful", "premium", "technical")
    return {
        "company_name": company,
        "industry": industry,
        "audience": f"decision makers in {industry or 'their market'}",
        "tone": tones[int(digest[:2], 16) % len(tones)],
        "value_props": [f"{company} saves time", f"{company} scales with you"],
        "keywords": [w.lower() for w in f"{company} {industry or ''}".split()][:6],
        "confidence": round(0.6 + int(digest[2:4], 16) / 255 * 0.35, 2),
        "source": "fake-trinity",
    }


def create_app(state: FakeTrinity | None = None) -> tuple[web.Application, FakeTrinity]:
    fake = state or FakeTrinity()
    app = web.Application()

    async def enrich(request: web.Request) -> web.Response:
        fake.calls += 1
        if request.headers.get("X-Trace-ID"):
            fake.trace_ids.append(request.headers["X-Trace-ID"])
        if fake.mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fake.released.wait(), fake.hang_seconds)
        if fake.mode != "ok":
            return web.json_response({"detail": "Trinity unavailable"}, status=503, headers=STAND_IN)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"detail": "Body is not valid JSON"}, status=400, headers=STAND_IN)
        company = body.get("company_name") if isinstance(body, dict) else None
        if not isinstance(company, str) or not company.strip():
            return web.json_response({"detail": "company_name is required"}, status=400, headers=STAND_IN)
        industry = body.get("industry") if isinstance(body.get("industry"), str) else None
        return web.json_response(enrichment_for(company, industry), headers=STAND_IN)

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        mode = body.get("mode", fake.mode)
        if mode not in MODES:
            return web.json_response({"detail": f"mode must be one of {MODES}"}, status=400, headers=STAND_IN)
        fake.mode = mode
        if mode == "hang":
            fake.released.clear()
        else:
            fake.released.set()
        return web.json_response(fake.stats(), headers=STAND_IN)

    async def release_hangs(app: web.Application) -> None:
        fake.released.set()

    app.on_shutdown.append(release_hangs)
    app.router.add_post("/api/v1/enrich", enrich)
    add_test_routes(app, "trinity", control=control, stats=fake.stats)
    return app, fake


def main(argv: list[str] | None = None) -> None:
    args = arguments("DEVELOPMENT STAND-IN for Trinity (see docs/ragnarok-contract.md)", 8002).parse_args(argv)
    app, _ = create_app()
    serve(app, "trinity", "Trinity", args.host, args.port)


if __name__ == "__main__":
    main()
