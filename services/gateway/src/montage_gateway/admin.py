"""The operator console: ``/admin/queues`` and its API ``/api/v1/admin/*``, for admins only.

**Who is an admin.** A user whose verified token carries ``ADMIN_ROLE_VALUE`` at the claim path
``ADMIN_ROLE_CLAIM`` (default ``app_metadata.role == "admin"``, Supabase's convention: only the
service role can write ``app_metadata``; a list value holding the role also counts). Everyone
else gets 403 on the page and on every API route; no token is 401, as everywhere.

**The API** is forwarded, like the other routes, route by route (the ``admin`` routes of
``montage_contracts.routes``, no prefix forwarding; ``montage_gateway.routes.Forward``) to the
orchestrator (queues, dead letters, jobs, the action log) or ragnarok-proxy (Nexus jobs), after
:meth:`AdminHandlers.require_admin`, with ``X-Montage-Role: admin`` added after the client's ``X-Montage-*`` headers
were dropped: the internal services refuse admin routes without it. ``GET /api/v1/admin/me``
is answered here.

**The page** is static HTML, CSS and JavaScript under ``static/admin`` (no build step) that
reads the same API a script would. A browser navigation cannot send ``Authorization``, so the
page also accepts the token from the ``montage_admin`` cookie (``Path=/admin``,
``SameSite=Strict``), which the sign-in page sets; the API itself takes only the header (the
page's script sends it), so the cookie alone can change nothing. Without a usable token the
page answers 401 with a sign-in form, a non-admin gets 403; both are HTML for browsers
(``Accept: text/html``) and the usual JSON error otherwise. Assets under ``/admin/assets/``
hold no data and are public.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from montage_common.web import Handler, json_response
from montage_contracts.api import AdminMe
from montage_contracts.errors import Forbidden, NotFound, Unauthorized

from montage_gateway.auth import bearer_token, request_user
from montage_gateway.settings import GatewaySettings
from montage_gateway.tokens import TokenError, TokenVerifier

STATIC = Path(__file__).parent / "static" / "admin"
HEADER_ROLE = "X-Montage-Role"
ADMIN_ROLE = "admin"  # what the internal services expect in HEADER_ROLE
COOKIE = "montage_admin"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:;"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path (``app_metadata.role``), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def has_role(claims: Mapping[str, Any], path: str, role: str) -> bool:
    value = claim_at(claims, path)
    if isinstance(value, list):
        return role in value
    return bool(value == role)


class AdminGate:
    """Decides whether a token is an admin's (verifying it; verdicts memoised until ``exp``, 60 s at most)."""

    def __init__(self, verifier: TokenVerifier, claim: str, role: str, *, memo_size: int = 1000) -> None:
        self.verifier = verifier
        self.claim = claim
        self.role = role
        self.memo_size = memo_size
        self._memo: OrderedDict[bytes, tuple[str, bool, float]] = OrderedDict()

    async def check(self, token: str) -> tuple[str, bool]:
        """``(user id, is admin)``; raises :class:`Unauthorized` for a token that does not verify."""
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        hit = self._memo.get(digest)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        try:
            identity = await self.verifier.verify(token)
        except TokenError as err:
            raise Unauthorized(str(err)) from None
        admin = has_role(identity.claims, self.claim, self.role)
        self._memo[digest] = (identity.user_id, admin, min(identity.expires_at, now + 60))
        if len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        return identity.user_id, admin


Parts = Callable[[web.Application], Any]  # app → the Gateway (auth, forwarder, orchestrator, ragnarok)


class AdminHandlers:
    def __init__(self, settings: GatewaySettings, parts: Parts, static_dir: Path = STATIC) -> None:
        self.settings = settings
        self.parts = parts
        self.static_dir = static_dir.resolve()
        self.development = settings.environment == "development"
        self._gates: dict[int, AdminGate] = {}

    def _gate(self, app: web.Application) -> AdminGate:
        gate = self._gates.get(id(app))
        if gate is None:
            gw = self.parts(app)
            gate = AdminGate(gw.auth.verifier, self.settings.admin_role_claim, self.settings.admin_role_value)
            self._gates[id(app)] = gate
        return gate

    async def require_admin(self, request: web.Request) -> str:
        """The caller's user id if an admin; 403 otherwise (the access middleware made it 401 without a token)."""
        request_user(request)  # the access middleware verified the token (401 otherwise)
        user, admin = await self._gate(request.app).check(bearer_token(request))
        if not admin:
            raise Forbidden("Admins only")
        return user

    # --- the API answered here ----------------------------------------------------------
    async def me(self, request: web.Request) -> web.Response:
        user = await self.require_admin(request)
        return json_response(
            AdminMe(
                user_id=user,
                admin=True,
                claim=self.settings.admin_role_claim,
                namespace=self.settings.redis_namespace,
            )
        )

    # --- the page -------------------------------------------------------------------
    def _token(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        cookie = request.cookies.get(COOKIE, "").strip()
        return cookie or None

    def _refuse(self, request: web.Request, err: Unauthorized | Forbidden) -> web.StreamResponse:
        if "text/html" not in request.headers.get("Accept", ""):
            raise err
        page = (self.static_dir / "signin.html").read_text()
        page = (
            page.replace("{{STATUS}}", str(err.status))
            .replace("{{MESSAGE}}", "Admins only: this account is not an admin." if err.status == 403 else
                     "Sign in with an admin's access token.")
            .replace("{{DEV}}", "1" if self.development else "0")
        )  # fmt: skip
        return web.Response(text=page, status=err.status, content_type="text/html", headers=SECURITY_HEADERS)

    async def page(self, request: web.Request) -> web.StreamResponse:
        token = self._token(request)
        if token is None:
            return self._refuse(request, Unauthorized("Missing bearer token"))
        try:
            _user, admin = await self._gate(request.app).check(token)
        except Unauthorized as err:
            return self._refuse(request, err)
        if not admin:
            return self._refuse(request, Forbidden("Admins only"))
        return web.FileResponse(
            self.static_dir / "index.html", headers={**SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"}
        )

    async def asset(self, request: web.Request) -> web.StreamResponse:
        base = (self.static_dir / "assets").resolve()
        target = (base / request.match_info["path"]).resolve()
        if not target.is_relative_to(base) or not target.is_file():
            raise NotFound("No such asset")
        return web.FileResponse(target, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    def handlers(self) -> dict[str, Handler]:
        """The console's routes answered by the gateway itself, by operation id."""
        return {"getAdminConsole": self.page, "getAdminAsset": self.asset, "getAdminMe": self.me}
