"""Helpers shared by the test packages (fixtures live in the conftest files)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from montage_common.web import HEADER_INTERNAL, HEADER_USER


def internal_headers(user: str, secret: str) -> dict[str, str]:
    """What the gateway adds when it forwards a verified user's request to an internal service."""
    return {HEADER_INTERNAL: secret, HEADER_USER: user}


async def wait_for(check: Callable[[], Awaitable[Any]], *, attempts: int = 400, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (bounded); returns that value."""
    last: Any = None
    for _ in range(attempts):
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met after {attempts} checks; last value: {last!r}")
