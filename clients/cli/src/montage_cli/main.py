"""``montage``: submit songs, watch progress, fetch videos, and look at the queues.

Talks to the gateway over HTTP (``MONTAGE_URL``, default http://127.0.0.1:8080) as the
caller of ``MONTAGE_TOKEN``; in development, without a token, as ``demo-user`` with a
development token it mints itself. ``montage queues`` reads Redis directly (``REDIS_URL``
or ``var/stack.env``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
from montage_contracts.pipeline import JOB_STATUSES

from montage_cli import commands, queues
from montage_cli.client import MontageClient
from montage_cli.errors import EXIT_CODES_HELP, CliError, Exit, Unavailable
from montage_cli.render import money
from montage_cli.settings import DEMO_USER, CliSettings, load_settings
from montage_cli.tokens import dev_token, refuse_in_production, resolve_token


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="montage",
        description=(__doc__ or "").split("\n\n")[0],
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", help="gateway URL (default: MONTAGE_URL or http://127.0.0.1:8080)")
    p.add_argument("--user", default=DEMO_USER, help="development only: the user a minted token is for")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("submit", help="upload a song with a prompt and create a job")
    s.add_argument("song", type=Path)
    s.add_argument("--prompt", required=True, help="what the video should look like (50-500 characters)")
    s.add_argument("--watch", action="store_true", help="follow progress until the job ends")
    s.add_argument(
        "--idempotency-key",
        help="sent as Idempotency-Key: submitting again with the same key (e.g. after a network error)"
        " answers the first job instead of creating another",
    )
    s.add_argument("--webhook-url", help="POST the job's final event there (signed; docs/frontend.md#webhooks)")
    s.add_argument("--json", action="store_true", help="JSON (with --watch: the job, then one line per event)")

    w = sub.add_parser("watch", help="follow a job's live progress (resumes dropped streams)")
    w.add_argument("job")
    w.add_argument("--last-event-id", help="resume after this event id")
    w.add_argument("--json", action="store_true", help="one JSON line per event")

    ev = sub.add_parser("events", help="follow every event of all your jobs on one stream (resumes dropped streams)")
    ev.add_argument("--last-event-id", help="resume after this event id (the ids `events` prints with --json)")
    ev.add_argument("--from-start", action="store_true", help="replay your whole event log (24 h) first")
    ev.add_argument("--max-events", type=int, help="stop after this many events (the first is the state)")
    ev.add_argument("--json", action="store_true", help="one JSON line per event")

    st = sub.add_parser("status", help="a job's current state")
    st.add_argument("job")
    st.add_argument("--json", action="store_true")

    ls = sub.add_parser("list", help="your jobs, newest first")
    ls.add_argument("--status", choices=JOB_STATUSES)
    ls.add_argument("--limit", type=int, default=10)
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--json", action="store_true")

    c = sub.add_parser("cancel", help="cancel a queued or running job")
    c.add_argument("job")
    c.add_argument("--json", action="store_true")

    dl = sub.add_parser("delete", help="delete a job: cancel it if running, its song, images, clips, video, events")
    dl.add_argument("job")
    dl.add_argument("--json", action="store_true")

    r = sub.add_parser("retry", help="retry a failed or cancelled job, reusing every stage it finished")
    r.add_argument("job")
    r.add_argument("--watch", action="store_true", help="follow the new job until it ends")
    r.add_argument("--json", action="store_true", help="JSON (with --watch: the new job, then one line per event)")

    u = sub.add_parser("usage", help="jobs used in the rate-limit window, when a slot frees, active jobs, spend")
    u.add_argument("--json", action="store_true")

    d = sub.add_parser("download", help="download a finished job's video")
    d.add_argument("job")
    d.add_argument("-o", "--out", type=Path, default=Path("out"), help="directory (default ./out)")
    d.add_argument("--json", action="store_true", help='{"job_id", "path"}')

    t = sub.add_parser("token", help="development only: print a development token")
    t.add_argument("--user", dest="token_user", default=None, help="user id (default demo-user)")
    t.add_argument("--json", action="store_true", help='{"access_token", "user_id"}')

    q = sub.add_parser("queues", help="operator view: stream length, pending, lag, dead letters, consumers")
    q.add_argument("--json", action="store_true")

    h = sub.add_parser("health", help="the gateway's health report (JSON); exit 7 when unhealthy")
    h.add_argument("--json", action="store_true", help="accepted for symmetry: the report is always JSON")
    return p


async def run_queues(settings: CliSettings, as_json: bool) -> int:
    from montage_common.redis import create_redis, keys_for, target_of

    redis = create_redis(target_of(settings), max_connections=4)
    try:
        snap = await queues.snapshot(redis, keys_for(settings))
    except OSError as exc:
        raise Unavailable(f"cannot reach Redis at {settings.redis_url}: {exc}") from None
    except Exception as exc:  # redis' own connection errors
        if type(exc).__name__ in ("ConnectionError", "TimeoutError"):
            raise Unavailable(f"cannot reach Redis at {settings.redis_url}: {exc}; is the stack running?") from None
        raise
    finally:
        await redis.aclose()
    if as_json:
        commands.emit_json(snap)
    else:
        print(queues.format_table(snap))
    return 0


async def run(args: argparse.Namespace, settings: CliSettings) -> int:
    if args.cmd == "queues":
        return await run_queues(settings, args.json)
    if args.cmd == "token":
        refuse_in_production(settings)
    url = args.url or settings.montage_url
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = MontageClient(session, url)
        if args.cmd == "health":
            report = await client.health()
            commands.emit_json(report)
            if report.get("status") != "healthy":
                issues = "; ".join(map(str, report.get("issues") or [])) or f"status {report.get('status')}"
                print(f"montage: unhealthy: {issues}", file=sys.stderr)
                return Exit.UNAVAILABLE
            return Exit.OK
        if args.cmd == "token":
            user = args.token_user or args.user
            token = await dev_token(client, settings, user)
            commands.emit_json({"access_token": token, "user_id": user}) if args.json else print(token)
            return 0
        client.token = await resolve_token(client, settings, args.user)
        return await dispatch(client, args)


async def dispatch(client: MontageClient, args: argparse.Namespace) -> int:
    match args.cmd:
        case "submit":
            job = await client.upload(
                args.song, args.prompt, idempotency_key=args.idempotency_key, webhook_url=args.webhook_url
            )
            if args.json and args.watch:  # JSON lines: the job, then its events
                commands.emit_json_line(job)
                await commands.follow(client, job["job_id"], json_lines=sys.stdout)
            elif args.json:
                commands.emit_json(job)
            else:
                print(f"job {job['job_id']} {job.get('status')} (estimated cost ${job.get('estimated_cost')})")
            if args.watch and not args.json:
                view = await commands.follow(client, job["job_id"])
                print(f"completed: total cost {money(view.cost)}; `montage download {job['job_id']}`")
        case "watch":
            lines = sys.stdout if args.json else None
            view = await commands.follow(client, args.job, json_lines=lines, last_event_id=args.last_event_id)
            if not args.json:
                print(f"completed: total cost {money(view.cost)}")
        case "events":
            start = "0-0" if args.from_start else args.last_event_id
            await commands.follow_user(client, json_lines=args.json, last_event_id=start, max_events=args.max_events)
        case "status":
            job = await client.job(args.job)
            commands.emit_json(job) if args.json else print(commands.format_job(job))
        case "list":
            body = await client.jobs(args.status, args.limit, args.offset)
            commands.emit_json(body) if args.json else print(commands.format_jobs(body))
        case "cancel":
            body = await client.cancel(args.job)
            commands.emit_json(body) if args.json else print(f"job {body.get('job_id')}: {body.get('message')}")
        case "delete":
            await client.delete(args.job)
            commands.emit_json({"job_id": args.job, "deleted": True}) if args.json else print(
                f"job {args.job}: deleted"
            )
        case "retry":
            job = await client.retry(args.job)
            if args.json:
                commands.emit_json_line(job) if args.watch else commands.emit_json(job)
            else:
                reused = ", ".join(job.get("reused_stages") or []) or "nothing"
                print(
                    f"job {job['job_id']} retries {job['retry_of']}: reuses {reused}; starts at {job['resumed_from']}"
                )
            if args.watch:
                view = await commands.follow(client, job["job_id"], json_lines=sys.stdout if args.json else None)
                if not args.json:
                    print(f"completed: total cost {money(view.cost)}; `montage download {job['job_id']}`")
        case "usage":
            body = await client.usage()
            commands.emit_json(body) if args.json else print(commands.format_usage(body))
        case "download":
            path = await commands.download(client, args.job, args.out)
            commands.emit_json({"job_id": args.job, "path": str(path)}) if args.json else print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings(os.environ)
    try:
        return asyncio.run(run(args, settings))
    except CliError as err:
        return report_error(err, as_json=getattr(args, "json", False))
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


def report_error(err: CliError, *, as_json: bool) -> int:
    """The message on stderr; with --json also one JSON object on stdout (the last line)."""
    print(f"montage: {err.message}", file=sys.stderr)
    if as_json:
        sys.stdout.write(json.dumps(err.as_json()) + "\n")
        sys.stdout.flush()
    return int(err.exit_code)


if __name__ == "__main__":
    raise SystemExit(main())
