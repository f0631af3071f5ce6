"""Who the CLI is: ``MONTAGE_TOKEN``, or in development a development token minted for the user.

Development tokens come from the gateway's ``POST /api/v1/dev/token`` (it knows its secret);
when that endpoint is absent and ``SUPABASE_JWT_SECRET`` is set, one is minted locally with
``montage_common.auth.mint_dev_token``. Never in production or staging.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from montage_cli.client import MontageClient
from montage_cli.errors import ApiError, AuthRequired, UsageError
from montage_cli.settings import CliSettings

DEV_TOKEN_TTL = 12 * 3600


def refuse_in_production(settings: CliSettings) -> None:
    if settings.is_production:
        raise UsageError(
            f"development tokens are not available when ENVIRONMENT={settings.environment}; set MONTAGE_TOKEN"
        )


def _local_mint(settings: CliSettings, user_id: str) -> str | None:
    if not settings.supabase_jwt_secret:
        return None
    try:
        auth = importlib.import_module("montage_common.auth")
    except ImportError:
        return None
    mint = cast(Callable[..., str] | None, getattr(auth, "mint_dev_token", None))
    return mint(settings.supabase_jwt_secret, user_id, DEV_TOKEN_TTL) if mint else None


async def dev_token(client: MontageClient, settings: CliSettings, user_id: str) -> str:
    """A development token for ``user_id`` (refused outside development)."""
    refuse_in_production(settings)
    try:
        return await client.dev_token(user_id)
    except ApiError as err:
        local = _local_mint(settings, user_id) if err.status in (404, 405) else None
        if local is None:
            raise
        return local


async def resolve_token(client: MontageClient, settings: CliSettings, user_id: str) -> str:
    """``MONTAGE_TOKEN`` if set; else a development token (development only)."""
    if settings.montage_token:
        return settings.montage_token
    if settings.is_production:
        raise AuthRequired("MONTAGE_TOKEN is not set (development tokens are refused in production)")
    return await dev_token(client, settings, user_id)
