"""Migrations applied by several processes at once neither fail nor duplicate."""

from __future__ import annotations

import subprocess
import sys
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from montage_common import db

MIGRATE = """
import asyncio, sys
from montage_common import db

async def main():
    pool = await db.create_pool(sys.argv[1])
    try:
        print("APPLIED:" + ",".join(await db.migrate(pool, "montage_orchestrator", "montage_ragnarok")))
    finally:
        await pool.close()

asyncio.run(main())
"""


def _url_for(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


async def test_concurrent_migrations_apply_each_file_once(server_database_url: str) -> None:
    name = f"montage_mig_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _url_for(server_database_url, name)
        procs = [
            subprocess.Popen([sys.executable, "-c", MIGRATE, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1].decode()[-2000:] for o in outputs]
        applied = [
            n
            for out, _ in outputs
            for line in out.decode().splitlines()
            if line.startswith("APPLIED:")
            for n in line.removeprefix("APPLIED:").split(",")
            if n
        ]
        expected = [n for n, _ in db.migration_files("montage_orchestrator", "montage_ragnarok")]
        # every file applied exactly once across the four processes
        assert sorted(applied) == sorted(expected)
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
            assert [r["name"] for r in rows] == expected
            tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
            assert {"jobs", "job_stages", "job_costs", "job_cleanup_log"} <= tables
            money = await conn.fetchval(
                "SELECT data_type FROM information_schema.columns WHERE table_name='job_costs' AND column_name='cost'"
            )
            assert money == "numeric"
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
