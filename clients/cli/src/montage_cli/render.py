"""A terminal progress view of a job: bar, current stage, latest message and running cost.

On a terminal the bar redraws in place; otherwise (logs, CI) each change is one line.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import msgspec
from montage_contracts import api
from montage_contracts.pipeline import JobStatus, StageUpdate

from montage_cli.sse import SseEvent

BAR_WIDTH = 28


def money(value: Any) -> str:
    """Dollars; sub-dollar amounts (local compute) keep four decimals so they do not read as $0.00."""
    try:
        amount = float(value)
    except (TypeError, ValueError):
        return "$?"
    return f"${amount:.2f}" if abs(amount) >= 1 or amount == 0 else f"${amount:.4f}"


@dataclass
class JobView:
    """What is known of a job from its events."""

    job_id: str
    progress: int = 0
    stage: str = JobStatus.QUEUED
    message: str = ""
    cost: float = 0.0
    remaining: float | None = None
    stages_done: list[str] = field(default_factory=list)
    final: JobStatus | None = None
    video_url: str | None = None
    error: str | None = None
    error_code: str | None = None

    def apply(self, ev: SseEvent) -> bool:
        """Fold one event in; returns whether anything visible changed."""
        try:
            payload = ev.payload()
        except (KeyError, msgspec.DecodeError):
            return False  # an event this client does not know, or not one of Montage's
        match payload:
            case api.StateData():  # the job as it is when the stream opens, before the log
                self.progress = payload.progress
                self.stage = payload.current_stage or payload.status
                self.cost = payload.total_cost
            case api.ProgressData():
                self.progress = payload.progress
                self.remaining = float(payload.estimated_remaining)
            case api.StageUpdateData():
                self.stage = payload.stage
                if payload.status == StageUpdate.COMPLETED and payload.stage not in self.stages_done:
                    self.stages_done.append(payload.stage)
                self.message = f"{payload.stage} {payload.status}"
            case api.MessageData():
                self.message = payload.text
                self.stage = payload.stage
            case api.CostUpdateData():
                self.cost = payload.total
            case api.CompletedData():
                self.final, self.progress = JobStatus.COMPLETED, 100
                self.video_url = payload.video_url
                self.cost = payload.total_cost
                self.message = "done"
            case api.ErrorData():
                self.final = JobStatus.FAILED
                self.error = payload.error
                self.error_code = payload.code
                self.message = self.error
            case _:
                return False
        return True

    def line(self, width: int = 100) -> str:
        filled = int(BAR_WIDTH * max(0, min(100, self.progress)) / 100)
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        eta = f" ~{int(self.remaining)}s left" if self.remaining else ""
        text = f"[{bar}] {self.progress:3d}% {self.stage:<19} {money(self.cost):>8}{eta} │ {self.message}"
        return text[: max(20, width - 1)]


class ProgressRenderer:
    """Draws a :class:`JobView` as it changes."""

    def __init__(self, out: TextIO = sys.stderr, *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._last = ""

    def draw(self, view: JobView) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        line = view.line(width)
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.out.write("\r\033[2K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[2K" + text + "\n")
            self._last = ""
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self._last:
            self.out.write("\n")
            self.out.flush()
        self._last = ""
