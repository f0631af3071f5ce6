"""Settings of the command line: read once in ``main()`` from the environment and ``var/stack.env``.

``var/stack.env`` (written by the local stack launcher) fills in what the environment leaves
unset, so ``montage queues`` and ``montage submit`` find a stack started with ``make up``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import msgspec
from montage_common.settings import Environment
from msgspec import Meta

DEFAULT_URL = "http://127.0.0.1:8080"
DEMO_USER = "demo-user"


class CliSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the CLI needs: where the gateway is, who the caller is, and (operators) the Redis.

    A client, not a service: it shares the services' variable names (``ENVIRONMENT``,
    ``REDIS_URL``, ``REDIS_NAMESPACE``) but none of their server secrets or checks.
    """

    environment: Environment = "development"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_namespace: str = "montage"
    montage_url: Annotated[str, Meta(description="the gateway")] = DEFAULT_URL
    montage_token: Annotated[str, Meta(description="bearer token (development: minted when empty)")] = ""
    montage_stack_env: Annotated[str, Meta(description="file written by make up with the stack's URLs")] = (
        "var/stack.env"
    )

    @property
    def is_production(self) -> bool:
        return self.environment in ("production", "staging")


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines; a missing file is empty."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def load_settings(environ: Mapping[str, str]) -> CliSettings:
    """The environment, over ``var/stack.env`` (or ``MONTAGE_STACK_ENV``)."""
    stack_env = read_env_file(Path(environ.get("MONTAGE_STACK_ENV") or "var/stack.env"))
    merged = {**stack_env, **{k: v for k, v in environ.items() if v != ""}}
    values = {f.name: merged[f.name.upper()] for f in msgspec.structs.fields(CliSettings) if f.name.upper() in merged}
    try:
        return msgspec.convert(values, CliSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"montage: invalid configuration: {exc}") from None
