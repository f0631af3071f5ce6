"""What each ``montage`` subcommand does, given a connected client."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from montage_contracts.errors import ErrorCode
from montage_contracts.pipeline import JobStatus

from montage_cli.client import MontageClient
from montage_cli.errors import JobFailed
from montage_cli.render import JobView, ProgressRenderer, money
from montage_cli.sse import SseEvent, job_events, user_events


def emit_json(value: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call: redirections of sys.stdout apply
    out.write(json.dumps(value, indent=2, default=str) + "\n")


def emit_json_line(value: Any, out: TextIO | None = None) -> None:
    """One JSON object on one line (JSON lines: ``watch --json``, ``submit --json --watch``)."""
    out = out or sys.stdout
    out.write(json.dumps(value, default=str) + "\n")
    out.flush()


async def follow(
    client: MontageClient,
    job_id: str,
    *,
    renderer: ProgressRenderer | None = None,
    json_lines: TextIO | None = None,
    last_event_id: str | None = None,
) -> JobView:
    """Follow the job's events to the end; raises :class:`JobFailed` if it fails."""
    view = JobView(job_id)
    renderer = renderer or ProgressRenderer()

    def reconnecting(attempt: int, delay: float) -> None:
        if json_lines is None:
            renderer.note(f"stream dropped; reconnecting in {delay:g} s (attempt {attempt})")

    try:
        async for ev in job_events(client, job_id, last_event_id=last_event_id, on_reconnect=reconnecting):
            if json_lines is not None:
                emit_json_line({"id": ev.id, "event": ev.event, "data": ev.json()}, json_lines)
            if view.apply(ev) and json_lines is None:
                renderer.draw(view)
    finally:
        renderer.finish()
    if view.final == JobStatus.FAILED:
        raise JobFailed(job_id, view.error_code or ErrorCode.MODULE_FAILURE, view.error or "Job failed")
    return view


def format_job(job: dict[str, Any]) -> str:
    lines = [
        f"job        {job.get('job_id')}",
        f"status     {job.get('status')}",
        f"stage      {job.get('current_stage') or '-'}",
        f"progress   {job.get('progress', 0)}%",
        f"cost       {money(job.get('total_cost', 0))}",
    ]
    if job.get("estimated_remaining"):
        lines.append(f"remaining  ~{job['estimated_remaining']} s")
    if job.get("video_url"):
        lines.append(f"video      {job['video_url']}")
    if job.get("error_message"):
        lines.append(f"error      {job['error_message']}")
    lines.append(f"created    {job.get('created_at')}")
    if job.get("updated_at"):
        lines.append(f"updated    {job['updated_at']}")
    return "\n".join(lines)


def format_jobs(body: dict[str, Any]) -> str:
    jobs = body.get("jobs") or []
    if not jobs:
        return "no jobs"
    head = f"{'job_id':<38} {'status':<11} {'progress':>8} {'cost':>9}  created"
    rows = [head, "─" * (len(head) + 20)]
    for j in jobs:
        rows.append(
            f"{j.get('job_id', ''):<38} {j.get('status', ''):<11} {j.get('progress', 0):>7}% "
            f"{money(j.get('total_cost', 0)):>9}  {j.get('created_at', '')}"
        )
    total = body.get("total")
    if total is not None:
        rows.append(f"{len(jobs)} of {total} (offset {body.get('offset', 0)})")
    return "\n".join(rows)


def format_usage(body: dict[str, Any]) -> str:
    """``montage usage``: the job-creation window first (what the next upload meets), then the rest."""
    window = f"{body['jobs_used']} of {body['jobs_limit']} jobs used in the last {body['window_seconds']} s"
    if body.get("next_slot_at"):
        window += f"; a slot frees at {body['next_slot_at']}"
    if body["jobs_remaining"] == 0:
        window += f" (uploads refused for {body['retry_after']} s)"
    return "\n".join(
        [
            window,
            f"active jobs {body['active_jobs']}",
            f"spent       {money(body['spent_this_month'])} since {body['month_start']}",
        ]
    )


async def download(client: MontageClient, job_id: str, out_dir: Path) -> Path:
    return await client.download(job_id, out_dir)


def format_user_event(ev: SseEvent) -> str:
    """One line of ``montage events``: the job (short id), the event, what it says."""
    data = ev.json()
    if ev.event == "state":
        jobs = data.get("jobs") or []
        active = ", ".join(f"{str(j['job_id'])[:8]} {j['status']} {j['progress']}%" for j in jobs) or "none"
        return f"active jobs: {active}"
    job = str(data.get("job_id", ""))[:8]
    match ev.event:
        case "stage_update":
            what = f"{data.get('stage')} {data.get('status')}"
        case "progress":
            what = f"{data.get('progress')}%"
        case "message":
            what = str(data.get("text", ""))
        case "cost_update":
            what = f"{data.get('stage')} {money(data.get('cost'))} (total {money(data.get('total'))})"
        case "preview":
            what = f"{data.get('kind')} {data.get('subject') or ''} {data.get('index')} {data.get('url')}".replace(
                "  ", " "
            )
        case "completed":
            what = f"video ready: {data.get('video_url')}"
        case "error":
            what = f"[{data.get('code')}] {data.get('error')}"
        case _:
            what = ev.data
    return f"{job} {ev.event:<12} {what}"


async def follow_user(
    client: MontageClient,
    *,
    json_lines: bool = False,
    last_event_id: str | None = None,
    max_events: int | None = None,
    out: TextIO | None = None,
) -> int:
    """Print the caller's events as they come (``montage events``); how many were printed."""
    out = out or sys.stdout
    printed = 0

    def reconnecting(attempt: int, delay: float) -> None:
        print(f"montage: stream dropped; reconnecting in {delay:g} s (attempt {attempt})", file=sys.stderr)

    async for ev in user_events(client, last_event_id=last_event_id, on_reconnect=reconnecting):
        if ev.event == "heartbeat":
            continue
        if json_lines:
            emit_json_line({"id": ev.id, "event": ev.event, "data": ev.json()}, out)
        else:
            out.write(format_user_event(ev) + "\n")
            out.flush()
        printed += 1
        if max_events is not None and printed >= max_events:
            break
    return printed
