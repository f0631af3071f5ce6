"""Who the CLI is: ``MONTAGE_TOKEN``, or in development a development token minted for the user.

Development tokens come from the gateway's ``POST /api/v1/dev/token`` (it knows its secret and
exists only in development). Never in production or staging.
"""

from __future__ import annotations

from montage_cli.client import MontageClient
from montage_cli.errors import AuthRequired, UsageError
from montage_cli.settings import CliSettings


def refuse_in_production(settings: CliSettings) -> None:
    if settings.is_production:
        raise UsageError(
            f"development tokens are not available when ENVIRONMENT={settings.environment}; set MONTAGE_TOKEN"
        )


async def dev_token(client: MontageClient, settings: CliSettings, user_id: str) -> str:
    """A development token for ``user_id`` (refused outside development)."""
    refuse_in_production(settings)
    return await client.dev_token(user_id)


async def resolve_token(client: MontageClient, settings: CliSettings, user_id: str) -> str:
    """``MONTAGE_TOKEN`` if set; else a development token (development only)."""
    if settings.montage_token:
        return settings.montage_token
    if settings.is_production:
        raise AuthRequired("MONTAGE_TOKEN is not set (development tokens are refused in production)")
    return await dev_token(client, settings, user_id)
