"""``make demo`` starts the stack with the development package's launcher, and says what to
install when it is missing (the CLI without its ``demo`` extra) instead of failing in a child."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from montage_cli import demo
from montage_cli.errors import CliError


def test_the_launcher_is_the_development_package() -> None:
    spec = importlib.util.find_spec(demo.StackHandle.LAUNCHER)
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve() == Path(__file__).resolve().parents[1] / "dev/src/montage_dev/devstack.py"


def test_without_the_development_package_the_demo_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def without_dev(name: str, package: str | None = None) -> object:
        return None if name.split(".")[0] == "montage_dev" else real(name, package)

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the demo started {args}")

    monkeypatch.setattr(importlib.util, "find_spec", without_dev)
    monkeypatch.setattr(demo.subprocess, "Popen", no_process)
    log = tmp_path / "var" / "demo-stack.log"
    with pytest.raises(CliError) as err:
        demo.StackHandle(log, 1, {})
    assert "montage-dev" in err.value.message and "demo" in err.value.message
    assert not log.exists()
