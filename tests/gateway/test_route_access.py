"""Who may call a route is the route table's ``auth``, route by route, at the gateway.

Every route the gateway serves or forwards (development view: all of them) is called without a
token, and the admin routes with a plain user's token: ``user`` and ``admin`` routes answer 401
without a token (also those whose handler authenticates itself: the stream, the console's page),
``public`` ones never do, and ``admin`` ones answer 403 to a user who is not an admin, before
anything is forwarded.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from montage_contracts.routes import Auth, Route, public

from tests.gateway.conftest import bearer

VALUES = {
    "job_id": str(uuid.uuid4()),
    "stream": "composer",
    "entry_id": "1-0",
    "path": "x.js",
    "key": "b/x",
    "webhook_id": "msg_" + "0" * 32,
}


def concrete(route: Route) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: VALUES[m.group(1)], route.template)


async def _status(gw: Any, route: Route, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await gw.request(route.method, concrete(route), headers=headers or {})
    body = await resp.json() if resp.content_type == "application/json" else None
    return resp.status, body


async def test_each_route_asks_for_the_credential_its_auth_says(gw: Any) -> None:
    table = public(development=True)
    assert {r.auth for r in table} == {Auth.PUBLIC, Auth.USER, Auth.ADMIN}
    for route in table:
        status, body = await _status(gw, route)
        if route.auth is Auth.PUBLIC:
            assert status != 401, (route.operation_id, status, body)
        else:
            assert status == 401, (route.operation_id, status, body)
            assert body["code"] == "UNAUTHORIZED", route.operation_id


async def test_admin_routes_refuse_a_user_who_is_not_an_admin(gw: Any) -> None:
    admin_routes = [r for r in public(development=True) if r.auth is Auth.ADMIN]
    assert len(admin_routes) >= 3
    for route in admin_routes:
        status, body = await _status(gw, route, bearer("plain-user"))
        assert status == 403, (route.operation_id, status, body)
        assert body["code"] == "FORBIDDEN", route.operation_id
