"""``python -m montage_gateway``: settings read once here, then the app runs until SIGTERM."""

from __future__ import annotations

from montage_common import logs, tracing
from montage_common.settings import load
from montage_common.web import run

from montage_gateway.app import create_app
from montage_gateway.settings import GatewaySettings


def main() -> None:
    settings = load(GatewaySettings)
    if problems := settings.problems():
        raise SystemExit("invalid configuration: " + "; ".join(problems))
    logs.configure(settings, "gateway")
    tracing.setup("gateway")  # before the app: its server and client spans
    run(create_app(settings), settings, max_connections_per_client=settings.connection_cap)


if __name__ == "__main__":
    main()
