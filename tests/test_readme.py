"""The README's configuration table is exactly what the settings classes define."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_configuration_table_matches_settings() -> None:
    table = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "config_table.py")], capture_output=True, text=True, check=True
    ).stdout
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- config-table:start -->\n(.*)<!-- config-table:end -->", readme, re.S)
    assert m, "README lacks the configuration table markers"
    assert m.group(1) == table, "README configuration table is stale: run `python tools/config_table.py`"
    for var in ("REDIS_URL", "DATABASE_URL", "ENVIRONMENT", "PORT"):
        assert f"`{var}`" in table


def test_readme_names_the_two_commands() -> None:
    top = (ROOT / "README.md").read_text()[:2500]
    assert "make demo" in top and "make test" in top and "make up" in top
