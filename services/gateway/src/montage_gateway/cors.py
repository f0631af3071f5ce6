"""CORS for the frontend (spec): ``FRONTEND_URL`` origins, GET/POST/OPTIONS, Authorization and
Content-Type, credentials, max age 3600. Preflights are answered before auth."""

from __future__ import annotations

from aiohttp import web
from montage_common.web import Handler

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, X-Request-ID"
EXPOSE_HEADERS = "X-Request-ID, Retry-After, RateLimit, RateLimit-Policy"
MAX_AGE = "3600"


class Cors:
    def __init__(self, origins: frozenset[str]) -> None:
        self.origins = origins

    def allowed(self, request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        return origin if origin is not None and origin.rstrip("/") in self.origins else None

    @web.middleware
    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            resp = web.Response(status=204)
            if self.allowed(request) is not None:
                resp.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
                resp.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
                resp.headers["Access-Control-Max-Age"] = MAX_AGE
            return resp
        return await handler(request)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Adds the CORS headers to every response, streamed or not (``on_response_prepare``)."""
        origin = self.allowed(request)
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary and "origin" not in vary.lower() else (vary or "Origin")
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
