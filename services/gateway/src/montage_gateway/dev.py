"""Development-only routes (registered only when ``ENVIRONMENT=development``).

- ``POST /api/v1/dev/token {"user_id", "role"?}`` → an HS256 token signed with the dev secret;
  with ``role`` the token carries it at ``ADMIN_ROLE_CLAIM`` (``app_metadata.role``), e.g. an
  admin of the operator console.
- ``GET /demo`` → ``static/demo.html``; ``GET /demo/<path>`` → files under ``static/demo/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from montage_common.web import json_response
from montage_contracts.api import DevToken
from montage_contracts.errors import NotFound, ValidationError

from montage_gateway.tokens import mint_dev_token

STATIC = Path(__file__).parent / "static"
_USER_RE = re.compile(r"^[A-Za-z0-9._@:-]{1,128}$")


_ROLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class TokenRequest(msgspec.Struct, frozen=True):
    user_id: str
    role: str | None = None


def nested(path: str, value: str) -> dict[str, Any]:
    """``nested("app_metadata.role", "admin")`` → ``{"app_metadata": {"role": "admin"}}``."""
    out: dict[str, Any] = {}
    node = out
    parts = [p for p in path.split(".") if p]
    for part in parts[:-1]:
        node[part] = node = {}
    node[parts[-1]] = value
    return out


class DevHandlers:
    def __init__(
        self,
        *,
        secret: str,
        audience: str,
        issuer: str,
        ttl_seconds: int,
        static_dir: Path = STATIC,
        role_claim: str = "app_metadata.role",
    ) -> None:
        self.role_claim = role_claim
        self.secret = secret
        self.audience = audience
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds
        self.static_dir = static_dir.resolve()

    async def token(self, request: web.Request) -> web.Response:
        try:
            body = msgspec.json.decode(await request.read(), type=TokenRequest)
        except msgspec.DecodeError:
            raise ValidationError('Body must be {"user_id": "<id>"}') from None
        if not _USER_RE.match(body.user_id):
            raise ValidationError("user_id must be 1-128 characters of [A-Za-z0-9._@:-]")
        if body.role is not None and not _ROLE_RE.match(body.role):
            raise ValidationError("role must be 1-32 characters of [a-z0-9_-], starting with a letter")
        extra = nested(self.role_claim, body.role) if body.role else None
        token = mint_dev_token(
            self.secret, body.user_id, self.ttl_seconds, audience=self.audience, issuer=self.issuer, extra=extra
        )
        return json_response(
            DevToken(access_token=token, token_type="bearer", expires_in=self.ttl_seconds, user_id=body.user_id)
        )

    async def demo(self, request: web.Request) -> web.StreamResponse:
        page = self.static_dir / "demo.html"
        if not page.is_file():
            raise NotFound("No demo page in this build")
        return web.FileResponse(page, headers={"Content-Type": "text/html; charset=utf-8"})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        base = (self.static_dir / "demo").resolve()
        target = (base / request.match_info["path"]).resolve()
        if not target.is_relative_to(base) or not target.is_file():
            raise NotFound("No such asset")
        return web.FileResponse(target)
