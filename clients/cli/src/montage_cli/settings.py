"""Settings of the command line: read once in ``main()`` from the environment and ``var/stack.env``.

``var/stack.env`` (written by the local stack launcher) fills in what the environment leaves
unset, so ``montage queues`` and ``montage submit`` find a stack started with ``make up``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from montage_common.settings import CommonSettings, load

DEFAULT_URL = "http://127.0.0.1:8080"
DEMO_USER = "demo-user"


class CliSettings(CommonSettings, frozen=True, kw_only=True):
    """What the CLI needs: where the gateway is, who the caller is, and (operators) the Redis."""

    montage_url: str = DEFAULT_URL
    montage_token: str = ""
    # Development only: the HS256 secret to mint a token locally when the dev endpoint is absent.
    supabase_jwt_secret: str = ""
    montage_stack_env: str = "var/stack.env"


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
    settings = load(CliSettings, merged)
    return settings
