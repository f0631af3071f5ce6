"""``python -m montage_ragnarok``: serve the Nexus RAGNAROK proxy."""

from __future__ import annotations

from montage_common import logs, tracing
from montage_common.settings import load
from montage_common.web import run

from montage_ragnarok.app import SERVICE, create_app
from montage_ragnarok.settings import ProxySettings


def main() -> None:
    settings = load(ProxySettings)
    logs.configure(settings, SERVICE)
    tracing.setup(SERVICE)  # before the app: its server and client spans
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
