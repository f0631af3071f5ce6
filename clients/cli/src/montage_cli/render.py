"""A terminal progress view of a job: bar, current stage, latest message and running cost.

On a terminal the bar redraws in place; otherwise (logs, CI) each change is one line.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

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
    stage: str = "queued"
    message: str = ""
    cost: float = 0.0
    remaining: float | None = None
    stages_done: list[str] = field(default_factory=list)
    final: str | None = None
    video_url: str | None = None
    error: str | None = None
    error_code: str | None = None

    def apply(self, ev: SseEvent) -> bool:
        """Fold one event in; returns whether anything visible changed."""
        data = ev.json()
        match ev.event:
            case "state":  # the job as it is when the stream opens (no id), before the log
                self.progress = int(float(data.get("progress") or 0))
                self.stage = str(data.get("current_stage") or data.get("status") or self.stage)
                if data.get("total_cost") is not None:
                    self.cost = float(data["total_cost"])
            case "progress":
                self.progress = int(float(data.get("progress", self.progress)))
                rem = data.get("estimated_remaining")
                self.remaining = float(rem) if isinstance(rem, int | float) else None
            case "stage_update":
                stage = str(data.get("stage", self.stage))
                status = data.get("status")
                self.stage = stage
                if status == "completed" and stage not in self.stages_done:
                    self.stages_done.append(stage)
                self.message = f"{stage} {status}" if status else self.message
            case "message":
                self.message = str(data.get("text", ""))
                self.stage = str(data.get("stage") or self.stage)
            case "cost_update":
                total = data.get("total")
                if isinstance(total, int | float | str):
                    self.cost = float(total)
            case "completed":
                self.final, self.progress = "completed", 100
                self.video_url = data.get("video_url")
                if data.get("total_cost") is not None:
                    self.cost = float(data["total_cost"])
                self.message = "done"
            case "error":
                self.final = "failed"
                self.error = str(data.get("error", "failed"))
                self.error_code = str(data.get("code", "ERROR"))
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
