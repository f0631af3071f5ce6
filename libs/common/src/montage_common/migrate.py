"""``python -m montage_common.migrate <package> ...``: apply the packages' pending migrations, exit.

Kubernetes runs it as the ``migrate`` Job (the only pod with DDL rights); the running services
then start with ``RUN_MIGRATIONS=false``. The Job names every package that owns migrations
(``montage_orchestrator montage_ragnarok``): this runner knows none of them. Migrations are serialised by an advisory lock, so a Job
racing a service that still migrates at start-up is safe. Exit status 0 when the schema is
current, 1 when the database could not be migrated.
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from montage_common import db, logs
from montage_common.settings import CommonSettings, load

log = structlog.get_logger()


async def run(database_url: str, packages: tuple[str, ...]) -> list[str]:
    pool = await db.create_pool(database_url, max_size=1)
    try:
        return await db.migrate(pool, *packages)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    packages = tuple(argv if argv is not None else sys.argv[1:])
    if not packages:
        sys.stderr.write("usage: python -m montage_common.migrate <package> [<package> ...]\n")
        return 2
    settings = load(CommonSettings)
    logs.configure(settings, "migrate")
    try:
        applied = asyncio.run(run(settings.database_url, packages))
    except Exception as exc:
        log.error("migration_failed", error=f"{type(exc).__name__}: {exc}"[:500])
        return 1
    log.info("migrations_applied", applied=applied, count=len(applied))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
