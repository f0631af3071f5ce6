"""``make up``: with no Redis or Postgres configured it starts both embedded plus every service,
and Ctrl-C leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from montage_contracts.pipeline import STAGES
from montage_dev.devstack import free_port


def _marked_pids(mark: str, var_dir: Path) -> set[int]:
    """Processes whose environment carries ``MONTAGE_STACK_MARK=<mark>`` (every descendant) or
    whose command line names the stack's data directory (Postgres, which pg_ctl starts afresh)."""
    needle = f"MONTAGE_STACK_MARK={mark}".encode()
    data = str(var_dir).encode()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") or data in cmdline:
            found.add(int(entry.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


@pytest.fixture
def tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory of its own under /tmp, not under pytest's base directory: the embedded Postgres
    runs as a system user (pgserver as root) that must traverse it, and another pytest session on
    the machine may make ``/tmp/pytest-of-<user>`` private (0700) at any moment."""
    path = Path(tempfile.mkdtemp(prefix="montage-devstack-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_up_starts_embedded_infra_and_services_and_ctrl_c_stops_all(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    ports = {
        name: free_port()
        for name in (
            "GATEWAY", "ORCHESTRATOR", "RAGNAROK_PROXY", "FAKE_RAGNAROK", "FAKE_TRINITY",
            "GATEWAY_OPS", "ORCHESTRATOR_OPS", "RAGNAROK_PROXY_OPS",
        )
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {f"{k}_PORT": str(v) for k, v in ports.items()}
    env |= {"MONTAGE_STACK_MARK": mark, "MONTAGE_VAR_DIR": str(tmp_path / "var"), "REDIS_NAMESPACE": "montage"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "montage_dev.devstack", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        health = f"http://127.0.0.1:{ports['GATEWAY']}/api/v1/health"
        deadline = time.monotonic() + 90  # liveness guard only; a healthy stack answers in seconds
        status, body = 0, b""
        while time.monotonic() < deadline and status != 200:
            status, body = _get(health)
            time.sleep(0.3)
        if status != 200:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=90)
            raise AssertionError(f"stack not healthy: {body!r}\n{out.decode(errors='replace')[-4000:]}")
        assert b'"database":"connected"' in body and b'"redis":"connected"' in body
        stack_env = (tmp_path / "var" / "stack.env").read_text()
        assert "REDIS_URL=redis://127.0.0.1:" in stack_env and "DATABASE_URL=postgresql://" in stack_env
        redis_port = int(stack_env.split("REDIS_URL=redis://127.0.0.1:")[1].split("/")[0])
        assert _port_open(redis_port)  # redis-server rewrites its title and environment, so check its port
        expected = [
            b"montage_gateway", b"montage_orchestrator", b"montage_ragnarok", b"postgres",
            b"montage_dev.fakes.ragnarok", b"montage_dev.fakes.trinity",
            *(b"--stage\0" + stage.encode() for stage in STAGES),
        ]  # fmt: skip
        missing = expected
        while missing and time.monotonic() < deadline:
            cmdlines = [_cmdline(p) for p in _marked_pids(mark, tmp_path / "var")]
            missing = [e for e in expected if not any(e in c for c in cmdlines)]
            time.sleep(0.2)
        assert not missing, missing
        for name in ("GATEWAY", "ORCHESTRATOR", "RAGNAROK_PROXY"):  # ops endpoints: their own port only
            assert _get(f"http://127.0.0.1:{ports[name + '_OPS']}/healthz")[0] == 200
            assert _get(f"http://127.0.0.1:{ports[name]}/healthz")[0] == 404
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out.decode()[-3000:]
    deadline = time.monotonic() + 15
    left = _marked_pids(mark, tmp_path / "var")
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _marked_pids(mark, tmp_path / "var")
    assert not left, f"processes left behind: {[_cmdline(p) for p in left]}"
    assert not _port_open(redis_port)
    assert b"[stack] stopped" in out


def test_a_killed_embedded_postgres_and_redis_are_revived(tmp_path: Path) -> None:
    """What ``make up``'s loop does when an embedded server dies: restart it on the same address."""
    import asyncio

    import asyncpg
    from montage_dev.devstack import EmbeddedPostgres, EmbeddedRedis, Stack

    stack = Stack(var_dir=tmp_path)
    stack.redis = EmbeddedRedis(tmp_path / "redis")
    stack.postgres = EmbeddedPostgres(tmp_path / "postgres")
    redis_url = stack.redis.start()
    pg_url = stack.postgres.start()
    try:
        assert stack.revive_infra() == []
        assert stack.redis.proc is not None
        os.kill(stack.redis.proc.pid, signal.SIGKILL)
        os.kill(int(stack.postgres.server.get_pid()), signal.SIGKILL)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30  # liveness guard only
        revived: list[str] = []
        while time.monotonic() < deadline and sorted(revived) != ["postgres", "redis"]:
            with contextlib.suppress(Exception):  # postgres refuses to start while its old children exit
                revived += stack.revive_infra()
            time.sleep(0.2)
        assert sorted(revived) == ["postgres", "redis"]
        assert stack.redis.url == redis_url and _port_open(stack.redis.port)

        async def select_one() -> int:
            conn = await asyncpg.connect(pg_url)
            try:
                return int(await conn.fetchval("SELECT 1"))
            finally:
                await conn.close()

        assert asyncio.run(select_one()) == 1
    finally:
        stack.redis.stop()
        stack.postgres.stop()
