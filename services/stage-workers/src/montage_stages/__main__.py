"""``python -m montage_stages --stage <name>``: run one stage worker until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import structlog
from aiohttp import web
from montage_common import logs, tracing
from montage_common import settings as settings_mod
from montage_common import web as common_web
from montage_common.liveness import WATCHDOG
from montage_common.redis import create_redis, keys_for, ready, target_of
from montage_common.storage import create_storage
from montage_contracts.pipeline import STAGES

from montage_stages.runtime.provider_check import provider_refusal
from montage_stages.worker import StageWorker, WorkerSettings

log = structlog.get_logger()


async def serve_metrics(settings: WorkerSettings, worker: StageWorker) -> web.AppRunner | None:
    if not settings.ops_port:
        return None
    api = common_web.create_base_app(f"stage-{worker.stage}")  # no API: only its ops endpoints

    async def redis_ready() -> None:
        await worker.redis.ping()

    api[common_web.READY_CHECKS]["redis"] = redis_ready
    api[WATCHDOG] = worker.watchdog  # /healthz follows the event loop and the worker's loops
    api[common_web.LIFECYCLE].started = True
    runner = common_web.AppRunner(
        common_web.create_ops_app(api, settings.dependency_probe_seconds),
        limits=common_web.ConnectionLimits.of(settings),
        access_log=None,
    )
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.ops_port).start()
    return runner


async def run(settings: WorkerSettings, stage: str) -> None:
    # Blocking stream reads need a socket timeout above their block time.
    redis = create_redis(target_of(settings), socket_timeout=settings.stream_block_ms / 1000 + 10.0)
    await ready(redis)
    storage = create_storage(settings)
    worker = StageWorker(settings, stage, redis, storage, keys_for(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    runner = await serve_metrics(settings, worker)
    log.info("stage_worker_started", stage=stage, consumer=worker.consumer.consumer)
    try:
        await worker.run()
    finally:
        if runner is not None:
            await runner.cleanup()
        with contextlib.suppress(Exception):
            await storage.close()
        await redis.aclose()
        log.info("stage_worker_stopped", stage=stage)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="montage_stages", description="Run one Montage stage worker.")
    parser.add_argument("--stage", required=True, choices=STAGES)
    args = parser.parse_args(argv)
    settings = settings_mod.load(WorkerSettings)
    refusal = provider_refusal(settings, args.stage)
    if refusal is not None:
        raise SystemExit(refusal)
    logs.configure(settings, f"stage-{args.stage}")
    tracing.setup(f"stage-{args.stage}")
    asyncio.run(run(settings, args.stage))


if __name__ == "__main__":
    main()
