"""Who may call the operator console's API, and the names its paths use for streams.

Every route needs the gateway's internal credential, a user id, and ``X-Montage-Role: admin``
(the gateway sets it after checking the token's admin claim and drops any copy a client sends).
"""

from __future__ import annotations

import re

from aiohttp import web
from montage_common.web import internal_user
from montage_contracts.api import ENTRY_ID_PATTERN
from montage_contracts.errors import Forbidden, NotFound, ValidationError
from montage_contracts.keys import ORCHESTRATOR_GROUP
from montage_contracts.pipeline import STAGES

from montage_orchestrator.deps import DEPS, Deps

HEADER_ROLE = "X-Montage-Role"  # set by the gateway (montage_gateway.admin) for admins only
ADMIN_ROLE = "admin"
RESULTS = "results"  # the results stream's name in admin paths
STREAMS = (*STAGES, RESULTS)
_ENTRY_ID = re.compile(ENTRY_ID_PATTERN)


def admin(request: web.Request) -> tuple[Deps, str]:
    """The dependencies and the admin's user id; 403 for anyone else."""
    deps = request.app[DEPS]
    user = internal_user(request, deps.settings.internal_secret)
    if request.headers.get(HEADER_ROLE, "") != ADMIN_ROLE:
        raise Forbidden("Admins only")
    return deps, user


def stream_of(deps: Deps, name: str) -> tuple[str, str]:
    """An admin stream name (a stage, or ``results``) → (stream key, group); 404 for another name."""
    if name in STAGES:
        return deps.keys.stage_stream(name), deps.keys.stage_group(name)
    if name == RESULTS:
        return deps.keys.results_stream(), ORCHESTRATOR_GROUP
    raise NotFound(f"No stream {name!r}; one of {', '.join(STREAMS)}")


def stream_param(deps: Deps, name: str) -> tuple[str, str]:
    """:func:`stream_of` for a query parameter: an unknown name is a bad request (400), not a
    missing resource."""
    try:
        return stream_of(deps, name)
    except NotFound as err:
        raise ValidationError(err.message) from None


def entry_id(raw: str, name: str = "entry_id") -> str:
    """A dead letter's id as Redis accepts it (``<ms>-<seq>``, each part a 64-bit integer, the
    document's pattern); 400 otherwise, so an id Redis would refuse never reaches it."""
    if _ENTRY_ID.fullmatch(raw) is None:
        raise ValidationError(f"{name} must be a stream entry id (<ms>-<seq>, each at most 2^64-1)")
    return raw
