"""Binding a service's handlers to the route table (``montage_contracts.routes``).

A service does not declare paths: it hands :func:`bind` a handler per ``operationId`` and the
table supplies method and path. Binding fails at startup (``create_app``) when the table has a
route of the service without a handler, or the service has a handler for no route, so a route
cannot be served without being in the table (and so in the document and the gateway's
forwarding), nor be in the table without being served.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiohttp import web
from montage_contracts.routes import Route

from montage_common.web import Handler


class RouteBindingError(RuntimeError):
    """The handlers and the route table disagree (a missing handler, or one for no route)."""


def bind(router: web.UrlDispatcher, routes: Iterable[Route], handlers: Mapping[str, Handler | None]) -> None:
    """Add every route of ``routes`` with ``handlers[route.operation_id]``.

    A handler of ``None`` means "deliberately not served in this configuration" (the caller says
    why, e.g. signed local files when storage is Supabase): the key must still be there, so a
    forgotten handler is an error, not a silent 404. GET routes also answer HEAD, as aiohttp's
    ``add_get`` does.
    """
    table = list(routes)
    wanted = {r.operation_id for r in table}
    missing = sorted(wanted - handlers.keys())
    extra = sorted(handlers.keys() - wanted)
    if missing or extra:
        raise RouteBindingError(
            "handlers and montage_contracts.routes disagree: "
            + "; ".join(
                part
                for part in (
                    f"no handler for {', '.join(missing)}" if missing else "",
                    f"no route for {', '.join(extra)}" if extra else "",
                )
                if part
            )
        )
    for route in table:
        handler = handlers[route.operation_id]
        if handler is None:
            continue
        if route.method == "GET":
            router.add_get(route.path, handler)
        else:
            router.add_route(route.method, route.path, handler)
