"""The import rules of the workspace (README "Architecture"), checked on the source.

- ``montage_streams`` (the stream runtime) imports no other Montage package.
- Services depend on ``montage_common`` and ``montage_streams`` only, never on each other; the
  CLI likewise.
- ``montage_common`` never imports a service or the CLI.
- The contracts (``keys``, ``models``, ``messages``, ``errors``, ``pipeline``, ``api``) import
  only the standard library, msgspec and each other, so any service or client can use them
  without pulling Redis, Postgres or aiohttp in.
- Nothing shipped imports ``tests`` (the fakes stay out of the image).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "montage_common": ROOT / "libs/common/src/montage_common",
    "montage_streams": ROOT / "libs/streams/src/montage_streams",
    "montage_gateway": ROOT / "services/gateway/src/montage_gateway",
    "montage_orchestrator": ROOT / "services/orchestrator/src/montage_orchestrator",
    "montage_stages": ROOT / "services/stage-workers/src/montage_stages",
    "montage_ragnarok": ROOT / "services/ragnarok-proxy/src/montage_ragnarok",
    "montage_cli": ROOT / "clients/cli/src/montage_cli",
}
CONTRACTS = ("keys", "models", "messages", "errors", "pipeline", "api")
ALLOWED_IN_CONTRACTS = {"msgspec", *(f"montage_common.{m}" for m in CONTRACTS)}


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` (every import statement, also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in PACKAGES:  # ``from montage_common import pipeline``: a submodule
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def _files(package: str) -> list[Path]:
    return sorted(PACKAGES[package].rglob("*.py"))


ALLOWED = {
    "montage_streams": {"montage_streams"},
    "montage_common": {"montage_common", "montage_streams"},
}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_packages_depend_only_on_the_libraries(package: str) -> None:
    allowed = ALLOWED.get(package, {package, "montage_common", "montage_streams"})
    bad = {
        (str(f.relative_to(ROOT)), m)
        for f in _files(package)
        for m in imports_of(f)
        if (_top(m) in PACKAGES and _top(m) not in allowed) or _top(m) == "tests"
    }
    assert not bad, f"{package} imports what it may not: {sorted(bad)}"


@pytest.mark.parametrize("module", CONTRACTS)
def test_contracts_import_only_the_standard_library_msgspec_and_each_other(module: str) -> None:
    path = PACKAGES["montage_common"] / f"{module}.py"
    stdlib = sys.stdlib_module_names
    bad = {m for m in imports_of(path) if _top(m) not in stdlib and m not in ALLOWED_IN_CONTRACTS and m != "__future__"}
    assert not bad, f"montage_common.{module} imports {sorted(bad)}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The rule is not vacuous: a forbidden import in a file is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from montage_orchestrator.store import get_job\n    import redis.asyncio\n")
    assert imports_of(probe) == {"montage_orchestrator.store", "redis.asyncio"}
