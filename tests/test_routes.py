"""The route table (``montage_contracts.routes``) is the one list of routes, and everyone agrees with it.

Compared here, without a running stack: the table; the routers the orchestrator, ragnarok-proxy
and the gateway build (``create_app``, which binds handlers by operation id); what the gateway
forwards and to which service; and the OpenAPI document. A route added in one place only fails
one of these tests, as does a handler bound to no route.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from montage_common.routing import RouteBindingError, bind
from montage_contracts.routes import ROUTES, Auth, Route, Service, public, served_by
from montage_gateway.app import create_app as create_gateway
from montage_gateway.openapi import document
from montage_gateway.routes import Forward, UploadForward
from montage_gateway.settings import GatewaySettings
from montage_orchestrator.app import create_app as create_orchestrator
from montage_orchestrator.settings import OrchestratorSettings
from montage_ragnarok.app import create_app as create_proxy
from montage_ragnarok.settings import ProxySettings

Key = tuple[str, str]  # (METHOD, path template)


def _bound(app: web.Application) -> dict[Key, Any]:
    """The app's routes (HEAD, which aiohttp adds beside GET, left out) and their handlers."""
    out: dict[Key, Any] = {}
    for r in app.router.routes():
        if r.method == "HEAD" or r.resource is None:
            continue
        key = (r.method, r.resource.canonical)
        assert key not in out, f"{key} bound twice"
        out[key] = r.handler
    return out


def _keys(routes: tuple[Route, ...]) -> set[Key]:
    return {(r.method, r.template) for r in routes}


def _gateway(environment: str, storage: str = "local") -> web.Application:
    settings = GatewaySettings(
        environment=environment,  # type: ignore[arg-type]
        supabase_jwt_secret="x" * 40,
        storage_backend=storage,  # type: ignore[arg-type]
        supabase_url="http://127.0.0.1:9" if storage == "supabase" else "",
        supabase_service_key="k" if storage == "supabase" else "",
    )
    return create_gateway(settings)


def test_the_table_is_well_formed() -> None:
    ids = [r.operation_id for r in ROUTES]
    assert len(ids) == len(set(ids)), "operation ids are unique"
    assert len(_keys(ROUTES)) == len(ROUTES), "one route per method and path"
    for r in ROUTES:
        placeholders = re.findall(r"\{([^}:]+)", r.path)
        declared = [p.name for p in r.params if p.where == "path"]
        assert placeholders == declared, f"{r.operation_id}: path parameters {placeholders} vs declared {declared}"
        assert r.path.startswith("/"), r.operation_id
        if r.auth is Auth.INTERNAL:
            assert r.service is not Service.GATEWAY, f"{r.operation_id}: the gateway has no internal routes"
        if r.auth is not Auth.INTERNAL:
            assert 429 in r.responses, f"{r.operation_id}: the request guard applies to every public route"
        if r.auth in (Auth.USER, Auth.ADMIN):
            assert {401, 503} <= set(r.responses), r.operation_id
        if r.auth is Auth.ADMIN:
            assert 403 in r.responses, r.operation_id


@pytest.mark.parametrize(
    ("service", "app"),
    [
        (Service.ORCHESTRATOR, lambda: create_orchestrator(OrchestratorSettings())),
        (Service.RAGNAROK, lambda: create_proxy(ProxySettings())),
    ],
    ids=["orchestrator", "ragnarok-proxy"],
)
def test_internal_services_serve_exactly_their_table_routes(service: Service, app: Any) -> None:
    assert set(_bound(app())) == _keys(served_by(service))


@pytest.mark.parametrize("environment", ["development", "production"])
def test_the_gateway_serves_its_routes_and_forwards_exactly_the_public_routes_of_the_others(environment: str) -> None:
    development = environment == "development"
    bound = _bound(_gateway(environment))
    table = public(development=development)
    assert set(bound) == _keys(table)
    for r in table:
        handler = bound[(r.method, r.template)]
        forward = getattr(handler, "__self__", None)
        if r.service is Service.GATEWAY:
            assert not isinstance(forward, Forward), f"{r.operation_id} is the gateway's own"
            continue
        assert isinstance(forward, Forward), f"{r.operation_id} must be forwarded"
        assert forward.service is r.service and forward.route is r
        assert (forward.admin_check is not None) == (r.auth is Auth.ADMIN), r.operation_id
    assert isinstance(bound[("POST", "/api/v1/upload-audio")].__self__, UploadForward)
    internal = {(r.method, r.template) for r in ROUTES if r.auth is Auth.INTERNAL}
    assert internal and not internal & set(bound), "internal routes are never forwarded"
    dev_only = _keys(tuple(r for r in ROUTES if r.development))
    assert dev_only and (dev_only <= set(bound)) is development


def test_the_gateway_leaves_out_signed_files_when_storage_is_supabase() -> None:
    bound = _bound(_gateway("production", storage="supabase"))
    assert set(bound) == _keys(public(development=False)) - {("GET", "/files/{key}")}


@pytest.mark.parametrize("development", [True, False])
def test_the_document_has_exactly_the_public_routes(development: bool) -> None:
    doc = document(development=development)
    documented = {(m.upper(), p): op["operationId"] for p, ops in doc["paths"].items() for m, op in ops.items()}
    assert documented == {(r.method, r.template): r.operation_id for r in public(development=development)}


def test_binding_refuses_a_route_without_handler_and_a_handler_without_route() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    routes = served_by(Service.RAGNAROK)
    complete = {r.operation_id: handler for r in routes}
    bind(web.Application().router, routes, complete)  # the happy path binds
    missing = dict(complete)
    missing.pop(routes[0].operation_id)
    with pytest.raises(RouteBindingError, match=f"no handler for {routes[0].operation_id}"):
        bind(web.Application().router, routes, missing)
    with pytest.raises(RouteBindingError, match="no route for unlistedThing"):
        bind(web.Application().router, routes, {**complete, "unlistedThing": handler})
