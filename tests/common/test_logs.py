"""Every line a process writes to stderr is one JSON object: its own events, the standard
library's loggers, and Python ``warnings`` too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent("""
    import logging, warnings
    import structlog
    from montage_common import logs
    from montage_common.settings import CommonSettings

    logs.configure(CommonSettings(log_format="json"), "warn-test")
    structlog.get_logger().info("before")
    warnings.warn("the old way is deprecated", DeprecationWarning, stacklevel=1)
    warnings.warn("something odd", UserWarning, stacklevel=1)
    logging.getLogger("aiohttp.server").warning("library says %s", "hi")
    structlog.get_logger().info("after")
""")


def test_warnings_are_json_lines_like_everything_else() -> None:
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # DeprecationWarning shown outside __main__ too
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any plain-text line
    events = [r["event"] for r in records]
    assert events[0] == "before" and events[-1] == "after"
    warned = [r for r in records if r.get("logger") == "py.warnings"]
    assert len(warned) == 2, records
    assert "DeprecationWarning: the old way is deprecated" in warned[0]["event"]
    assert "UserWarning: something odd" in warned[1]["event"]
    assert all(r["level"] == "warning" and r["service"] == "warn-test" for r in warned)
    assert {r["service"] for r in records} == {"warn-test"}
