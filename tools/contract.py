"""The published contract: ``clients/openapi.json`` and ``clients/montage-api.d.ts``, generated.

- ``clients/openapi.json``: the production OpenAPI document, exactly what the gateway serves
  with ``ENVIRONMENT=production`` (``montage_gateway.openapi.document``: the route table plus the
  Structs of ``montage_contracts.api``).
- ``clients/montage-api.d.ts``: its TypeScript types, written by ``openapi-typescript``.
- ``clients/openapi.release.json``: the document of the last release, the baseline of the
  breaking-change check (``optic diff --check``).

Commands (``make contract`` is ``--install --write``)::

    python tools/contract.py --write      # regenerate openapi.json and the TypeScript types
    python tools/contract.py --check      # exit 1 if the committed files differ from the code
    python tools/contract.py --breaking   # exit 1 on a breaking change since openapi.release.json
    python tools/contract.py --release    # at a release: openapi.json becomes the new baseline
    python tools/contract.py --install    # the npm tools, pinned by tools/npm/package-lock.json

The npm tools are installed with ``npm ci`` into ``.tools/contract`` (git-ignored), from the
lock file committed in ``tools/npm`` (docs/contracts.md says why these tools).
``tests/test_contract.py`` runs the checks.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "clients"
OPENAPI = CLIENTS / "openapi.json"
TYPES = CLIENTS / "montage-api.d.ts"
RELEASE = CLIENTS / "openapi.release.json"
NPM_SPEC = ROOT / "tools" / "npm"
NPM_PREFIX = ROOT / ".tools" / "contract"
BIN = NPM_PREFIX / "node_modules" / ".bin"
REGENERATE = "make contract"
# optic and its dependencies send usage data unless told not to.
QUIET_ENV = {"OPTIC_TELEMETRY_LEVEL": "off", "SCARF_ANALYTICS": "false", "DO_NOT_TRACK": "1"}


class ToolsMissing(RuntimeError):
    """The npm tools are not installed and cannot be (no node/npm, or no registry)."""


def openapi_text() -> str:
    """The production document as committed: 2-space JSON, keys in the document's own order."""
    from montage_gateway.openapi import document

    return json.dumps(document(development=False), indent=2, ensure_ascii=False) + "\n"


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **QUIET_ENV}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _installed() -> bool:
    """The tools in ``.tools/contract`` are the locked ones (reinstalled when the lock changes)."""
    lock = NPM_PREFIX / "package-lock.json"
    return (
        all((BIN / name).exists() for name in ("openapi-typescript", "tsc", "optic"))
        and lock.exists()
        and filecmp.cmp(lock, NPM_SPEC / "package-lock.json", shallow=False)
    )


def install() -> Path:
    """``npm ci`` of ``tools/npm`` into ``.tools/contract``; the directory of the tools' binaries."""
    if _installed():
        return BIN
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ToolsMissing("node/npm are not installed (Debian: apt-get install nodejs npm)")
    NPM_PREFIX.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(NPM_SPEC / name, NPM_PREFIX / name)
    done = _run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=NPM_PREFIX)
    if done.returncode != 0 or not _installed():
        raise ToolsMissing(f"npm ci of tools/npm failed: {(done.stderr or done.stdout).strip()[-600:]}")
    return BIN


def types_text(openapi: str, bin_dir: Path) -> str:
    """What ``openapi-typescript`` makes of the document text ``openapi``."""
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "openapi.json", Path(tmp) / "montage-api.d.ts"
        source.write_text(openapi)
        done = _run([str(bin_dir / "openapi-typescript"), str(source), "-o", str(target)])
        if done.returncode != 0:
            raise RuntimeError(f"openapi-typescript failed: {done.stderr.strip()[-1000:]}")
        return target.read_text()


def stale(bin_dir: Path | None) -> list[str]:
    """The committed files that differ from what the code generates (types only with the tools)."""
    openapi = openapi_text()
    out = [] if OPENAPI.exists() and OPENAPI.read_text() == openapi else [str(OPENAPI.relative_to(ROOT))]
    if bin_dir is not None and not (TYPES.exists() and TYPES.read_text() == types_text(openapi, bin_dir)):
        out.append(str(TYPES.relative_to(ROOT)))
    return out


def breaking(base: Path, head: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    """``optic diff base head --check``: exit 0 when ``head`` breaks no client of ``base``."""
    with tempfile.TemporaryDirectory() as tmp:  # optic looks for a git repository and config from cwd
        return _run([str(bin_dir / "optic"), "diff", str(base), str(head), "--check"], cwd=Path(tmp))


def write(bin_dir: Path) -> None:
    openapi = openapi_text()
    OPENAPI.write_text(openapi)
    TYPES.write_text(types_text(openapi, bin_dir))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    for flag in ("--install", "--write", "--check", "--breaking", "--release"):
        action.add_argument(flag, action="store_true")
    args = parser.parse_args()
    try:
        if args.release:
            shutil.copyfile(OPENAPI, RELEASE)
            print(f"{RELEASE.relative_to(ROOT)} is now the baseline of the breaking-change check")
            return 0
        bin_dir = install()
        if args.install:
            return 0
        if args.write:
            write(bin_dir)
            print(f"wrote {OPENAPI.relative_to(ROOT)} and {TYPES.relative_to(ROOT)}")
            return 0
        if args.check:
            if differ := stale(bin_dir):
                print(f"{', '.join(differ)} differ from what the code generates: run `{REGENERATE}`", file=sys.stderr)
                return 1
            return 0
        done = breaking(RELEASE, OPENAPI, bin_dir)
        print(done.stdout + done.stderr)
        return done.returncode
    except ToolsMissing as err:
        print(f"contract tools unavailable: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
