"""``python -m montage_orchestrator.migrate``: apply pending migrations, then exit.

Kubernetes runs it as the ``migrate`` Job (the only pod with DDL rights); the running services
then start with ``RUN_MIGRATIONS=false``. Migrations are serialised by an advisory lock, so a
Job racing a service that still migrates at start-up is safe. Exit status 0 when the schema is
current, 1 when the database could not be migrated.
"""

from __future__ import annotations

import asyncio

import structlog
from montage_common import db, logs
from montage_common.settings import load

from montage_orchestrator.settings import OrchestratorSettings

log = structlog.get_logger()


async def run(database_url: str) -> list[str]:
    pool = await db.create_pool(database_url, max_size=1)
    try:
        return await db.migrate(pool)
    finally:
        await pool.close()


def main() -> int:
    settings = load(OrchestratorSettings)
    logs.configure(settings, "migrate")
    try:
        applied = asyncio.run(run(settings.database_url))
    except Exception as exc:
        log.error("migration_failed", error=f"{type(exc).__name__}: {exc}"[:500])
        return 1
    log.info("migrations_applied", applied=applied, count=len(applied))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
