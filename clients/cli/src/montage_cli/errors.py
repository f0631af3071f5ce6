"""Errors of the command line, each with the message a user should see."""

from __future__ import annotations

from typing import Any


class CliError(Exception):
    """Base of every error the CLI reports (printed without a traceback)."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class StackNotRunning(CliError):
    """The gateway does not answer."""

    def __init__(self, url: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(f"cannot reach Montage at {url}{extra}: is the stack running? try `make up`")


class ApiError(CliError):
    """The API answered with an error body."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.body = body
        self.code = str(body.get("code") or body.get("detail") or f"HTTP_{status}")
        self.error = str(body.get("error") or body.get("detail") or "request failed")
        self.retry_after = retry_after
        super().__init__(self._describe())

    def _describe(self) -> str:
        if self.status == 401:
            return f"401 unauthorized: {self.error}. Set MONTAGE_TOKEN (or, in development, `montage token`)."
        if self.status == 429:
            wait = f"; try again in {int(self.retry_after)} s" if self.retry_after is not None else ""
            return f"429 rate limited ({self.code}): {self.error}{wait}"
        if self.status == 402 or self.code == "BUDGET_EXCEEDED":
            return f"{self.status} budget exceeded: {self.error}"
        return f"{self.status} {self.code}: {self.error}"


class JobFailed(CliError):
    """The job ended in failure."""

    exit_code = 3

    def __init__(self, job_id: str, code: str, error: str) -> None:
        self.job_id = job_id
        self.code = code
        self.error = error
        super().__init__(f"job {job_id} failed [{code}]: {error}")
