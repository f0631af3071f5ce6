"""Errors of the command line, each with the message a user should see and its exit code.

Exit codes (``montage --help`` prints them; clients/cli/README.md and docs/operations.md too):

====  ==========================================================================================
0     success (``health``: the deployment is healthy)
1     any other error (an API error not listed below, e.g. 400, 402, 409, 500; a bad answer)
2     usage: bad arguments, a missing file, a command not available here (``token`` in production)
3     the job failed (``watch``, ``submit --watch``)
4     authentication or permission: HTTP 401 or 403, no token where one is needed
5     not found: HTTP 404 or 410 (no such job, or its video expired)
6     rate limited: HTTP 429 (the message says when to retry)
7     unavailable: HTTP 502, 503 or 504, connection refused or reset, timeouts, a progress stream
      lost for good; ``health`` when the deployment reports itself unhealthy
130   interrupted (Ctrl-C)
====  ==========================================================================================
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from montage_contracts.errors import ErrorCode


class Exit(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    JOB_FAILED = 3
    AUTH = 4
    NOT_FOUND = 5
    RATE_LIMITED = 6
    UNAVAILABLE = 7
    INTERRUPTED = 130


EXIT_CODES_HELP = """\
exit codes:
  0    success (health: healthy)
  1    any other error (e.g. HTTP 400, 402, 409, 500)
  2    usage: bad arguments, missing file, command not available here
  3    the job failed (watch, submit --watch)
  4    authentication or permission (HTTP 401, 403; no token)
  5    not found (HTTP 404, 410)
  6    rate limited (HTTP 429)
  7    unavailable (HTTP 502, 503, 504; connection refused; timeouts; health: unhealthy)
  130  interrupted

With --json, stdout carries only JSON: one document, or with watch / submit --watch one JSON
object per line; on an error the last object is {"error", "code", "status", "exit_code"}."""


def exit_for_status(status: int) -> Exit:
    if status in (401, 403):
        return Exit.AUTH
    if status in (404, 410):
        return Exit.NOT_FOUND
    if status == 429:
        return Exit.RATE_LIMITED
    if status in (502, 503, 504):
        return Exit.UNAVAILABLE
    return Exit.ERROR


class CliError(Exception):
    """Base of every error the CLI reports (printed without a traceback)."""

    exit_code: int = Exit.ERROR
    code = "ERROR"
    status: int | None = None

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def as_json(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code, "status": self.status, "exit_code": int(self.exit_code)}


class UsageError(CliError):
    """The command cannot run as given (arguments, files, environment)."""

    exit_code = Exit.USAGE
    code = "USAGE"


class AuthRequired(CliError):
    """No usable credentials."""

    exit_code = Exit.AUTH
    code = ErrorCode.UNAUTHORIZED


class Unavailable(CliError):
    """Montage does not answer, or not for long enough."""

    exit_code = Exit.UNAVAILABLE
    code = "UNAVAILABLE"


class StackNotRunning(Unavailable):
    """The gateway does not answer."""

    def __init__(self, url: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(f"cannot reach Montage at {url}{extra}: is the stack running? try `make up`")


class Unhealthy(Unavailable):
    """``montage health``: the deployment reports itself unhealthy."""

    code = "UNHEALTHY"


class ApiError(CliError):
    """The API answered with an error body."""

    status: int

    def __init__(self, status: int, body: dict[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.body = body
        self.code = str(body.get("code") or body.get("detail") or f"HTTP_{status}")
        self.error = str(body.get("error") or body.get("detail") or "request failed")
        self.retry_after = retry_after
        self.exit_code = exit_for_status(status)
        super().__init__(self._describe())

    def _describe(self) -> str:
        if self.status == 401:
            return f"401 unauthorized: {self.error}. Set MONTAGE_TOKEN (or, in development, `montage token`)."
        if self.status == 429:
            wait = f"; try again in {int(self.retry_after)} s" if self.retry_after is not None else ""
            return f"429 rate limited ({self.code}): {self.error}{wait}"
        if self.status == 402 or self.code == ErrorCode.BUDGET_EXCEEDED:
            return f"{self.status} budget exceeded: {self.error}"
        return f"{self.status} {self.code}: {self.error}"

    def as_json(self) -> dict[str, Any]:
        out = super().as_json()
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


class JobFailed(CliError):
    """The job ended in failure."""

    exit_code = Exit.JOB_FAILED

    def __init__(self, job_id: str, code: str, error: str) -> None:
        self.job_id = job_id
        self.code = code
        self.error = error
        super().__init__(f"job {job_id} failed [{code}]: {error}")

    def as_json(self) -> dict[str, Any]:
        return {**super().as_json(), "job_id": self.job_id}
