"""ragnarok-proxy's container: what the handlers need, reached through ``app[DEPS]``."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from montage_ragnarok.ragnarok import RagnarokClient
from montage_ragnarok.settings import ProxySettings
from montage_ragnarok.store import JobStore
from montage_ragnarok.trinity import TrinityClient


@dataclass(frozen=True, slots=True)
class Deps:
    """What the handlers need, built in the app's cleanup context."""

    settings: ProxySettings
    store: JobStore
    ragnarok: RagnarokClient
    trinity: TrinityClient


DEPS: web.AppKey[Deps] = web.AppKey("ragnarok_deps", Deps)
