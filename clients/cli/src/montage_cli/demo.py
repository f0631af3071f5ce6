"""``make demo``: one command from a fresh checkout to a music video in ``./out/``.

1. If nothing answers on ``MONTAGE_URL``, start the local stack the way ``make up`` does
   (``python -m montage_dev.devstack up`` in the background, output in
   ``var/demo-stack.log``) and wait for ``/api/v1/health``; it is stopped at the end only if
   this command started it. The launcher is the development package's (``montage-dev``, the
   ``demo`` extra of this package; the workspace's dev group installs it): the demo runs it as a
   process of its own session, so it can stop the whole stack, and never imports it.
2. Without ``--audio``, write a 40 s sample song (drums, bass and chords) with the stage
   workers' synthesizer.
3. Submit it with the prompt, as ``demo-user`` with a development token, show live progress
   from the SSE stream, then download the video into ``./out/`` and print its path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from montage_cli import commands
from montage_cli.client import MontageClient
from montage_cli.errors import CliError, JobFailed, StackNotRunning
from montage_cli.render import ProgressRenderer, money
from montage_cli.settings import DEFAULT_URL, DEMO_USER, CliSettings, load_settings
from montage_cli.tokens import resolve_token

DEFAULT_PROMPT = (
    "A neon-lit city at night seen from a moving train, rain on the windows, warm reflections, "
    "slow dreamy camera moves that cut on the beat"
)
STACK_START_TIMEOUT = 240.0
STACK_STOP_GRACE = 30.0


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


class StackHandle:
    """A ``devstack up`` this demo started, and only that one."""

    LAUNCHER = "montage_dev.devstack"

    def __init__(self, log_path: Path, gateway_port: int, env: dict[str, str]) -> None:
        if importlib.util.find_spec(self.LAUNCHER.split(".")[0]) is None:
            raise CliError(
                "no stack runs and the local launcher is not installed: it is the development package"
                " montage-dev (this package's `demo` extra; `make demo` in a checkout installs it),"
                " or point MONTAGE_URL at a running Montage"
            )
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.LAUNCHER, "up"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**env, "GATEWAY_PORT": str(gateway_port)},
            start_new_session=True,
        )

    def exited(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STACK_STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


async def wait_healthy(client: MontageClient, stack: StackHandle | None, limit_seconds: float) -> None:
    deadline = time.monotonic() + limit_seconds
    last = "no answer"
    while time.monotonic() < deadline:
        if stack is not None and stack.exited() is not None:
            raise CliError(f"the local stack exited ({stack.exited()}); its log ends:\n{stack.log_tail()}")
        try:
            health = await client.health()
            if health.get("status") == "healthy":
                return
            last = f"unhealthy: {', '.join(map(str, health.get('issues') or [])) or health}"
        except StackNotRunning:
            last = "no answer"
        await asyncio.sleep(0.5)
    tail = f"\n{stack.log_tail()}" if stack else ""
    raise CliError(f"the gateway at {client.base_url} did not become healthy in {limit_seconds:.0f} s ({last}){tail}")


async def make_song(path: Path, seconds: float) -> Path:
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "montage_stages.media.synth", str(path), "--seconds", str(seconds), "--bpm", "120",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0 or not await asyncio.to_thread(path.exists):
        raise CliError(f"could not make a sample song: {err.decode(errors='replace').strip()[-500:]}")
    return path


async def find_running(client: MontageClient, candidates: list[str]) -> str | None:
    """The first candidate URL whose gateway answers."""
    for url in candidates:
        client.base_url = url
        try:
            await client.health()
            return url
        except StackNotRunning:
            continue
    return None


async def demo(args: argparse.Namespace, settings: CliSettings, environ: dict[str, str]) -> int:
    started = time.monotonic()
    explicit = args.url or environ.get("MONTAGE_URL")
    # Without an explicit URL: the stack var/stack.env names (it may be stale), then the default.
    candidates = [explicit] if explicit else list(dict.fromkeys([settings.montage_url, DEFAULT_URL]))
    candidates = [c.rstrip("/") for c in candidates]
    stack: StackHandle | None = None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = MontageClient(session, candidates[-1])
        try:
            url = await find_running(client, candidates)
            if url is not None:
                print(f"Montage is running at {url}")
            else:
                url = client.base_url = candidates[-1]
                log = Path("var/demo-stack.log")
                stack = StackHandle(log, _port(url), environ)
                print(f"Nothing answers at {url}: starting the local stack (log: {log}) …", flush=True)
            await wait_healthy(client, stack, STACK_START_TIMEOUT)
            if stack is not None:
                print(f"stack up in {time.monotonic() - started:.1f} s", flush=True)

            song = Path(args.audio) if args.audio else None
            if song is None:
                song = await make_song(Path(args.out) / "demo-song.mp3", args.seconds)
                print(f"made a {args.seconds:g} s sample song: {song}")
            client.token = await resolve_token(client, settings, DEMO_USER)
            job = await client.upload(song, args.prompt)
            job_id = str(job["job_id"])
            print(f"submitted job {job_id} (estimated cost ${job.get('estimated_cost')})", flush=True)
            view = await commands.follow(client, job_id, renderer=ProgressRenderer(sys.stdout))
            path = await client.download(job_id, Path(args.out))
            print(f"total cost {money(view.cost)}; took {time.monotonic() - started:.1f} s")
            print(f"video: {path.resolve()}")
            return 0
        except JobFailed as err:
            print(f"demo failed: job {err.job_id} ended with {err.code}: {err.error}", file=sys.stderr)
            return err.exit_code
        finally:
            if stack is not None:
                print("stopping the local stack this demo started …", flush=True)
                await asyncio.to_thread(stack.stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="montage-demo", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--audio", help="a song (mp3/wav/flac, ≤10 MB); default: a generated sample song")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="50-500 characters")
    p.add_argument("--url", help="gateway URL (default MONTAGE_URL or http://127.0.0.1:8080)")
    p.add_argument("--out", default="out", help="where the video goes (default ./out)")
    p.add_argument("--seconds", type=float, default=40.0, help="length of the sample song")
    args = p.parse_args(argv)
    environ = dict(os.environ)
    settings = load_settings(environ)
    try:
        return asyncio.run(demo(args, settings, environ))
    except CliError as err:
        print(f"demo failed: {err.message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
