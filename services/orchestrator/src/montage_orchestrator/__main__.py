"""``python -m montage_orchestrator``: serve the orchestrator."""

from __future__ import annotations

from montage_common import logs, tracing
from montage_common.settings import load
from montage_common.web import run

from montage_orchestrator.app import SERVICE, create_app
from montage_orchestrator.settings import OrchestratorSettings


def main() -> None:
    settings = load(OrchestratorSettings)
    logs.configure(settings, SERVICE)
    tracing.setup(SERVICE)  # before the app: its server and client spans
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
