"""The import rules of the workspace (README "Architecture"), checked on the source.

- ``montage_streams`` (the stream runtime) imports no other Montage package.
- ``montage_contracts`` (``keys``, ``models``, ``messages``, ``errors``, ``pipeline``, ``api``, ``events``, ``routes``)
  imports only the standard library, msgspec and itself, and declares only msgspec, so any
  service or client can use it without pulling Redis, Postgres or aiohttp in.
- Services depend on the libraries (``montage_contracts``, ``montage_common``,
  ``montage_streams``) only, never on each other; the CLI likewise.
- ``montage_common`` never imports a service or the CLI.
- Nothing shipped imports ``tests`` (the fakes stay out of the image).
- The development package ``montage_dev`` (``tests/dev``: the stack launcher and the fakes) may
  import anything shipped; nothing shipped imports it: no library, no service, and of the CLI
  (which the image installs too) only its development command, ``montage_cli.demo``.
- Tests reach the fakes of third-party services only as ``montage_dev.fakes.*`` modules: no
  ``tests/fakes`` directory, no loading of a source file by path.

And the contract the code speaks:

- route paths are declared only in the route table (``montage_contracts.routes``);
- no service handler answers a dict literal: bodies are ``montage_contracts.api`` Structs;
- no bare status or code strings outside ``montage_contracts``: a string equal to a
  ``JobStatus``, ``StageStatus`` or ``ErrorCode`` value, compared, assigned or passed as a
  status or code, is the enum's member (exceptions listed with their reason in
  ``VOCABULARY_ALLOWED``, each still needed).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "montage_contracts": ROOT / "libs/contracts/src/montage_contracts",
    "montage_common": ROOT / "libs/common/src/montage_common",
    "montage_streams": ROOT / "libs/streams/src/montage_streams",
    "montage_gateway": ROOT / "services/gateway/src/montage_gateway",
    "montage_orchestrator": ROOT / "services/orchestrator/src/montage_orchestrator",
    "montage_stages": ROOT / "services/stage-workers/src/montage_stages",
    "montage_ragnarok": ROOT / "services/ragnarok-proxy/src/montage_ragnarok",
    "montage_cli": ROOT / "clients/cli/src/montage_cli",
    "montage_dev": ROOT / "tests/dev/src/montage_dev",
}
SHIPPED = sorted(set(PACKAGES) - {"montage_dev"})
# The one shipped module that may use the development package (``make demo`` starts the stack).
MAY_USE_DEV = {"clients/cli/src/montage_cli/demo.py"}
LIBRARIES = {"montage_contracts", "montage_common", "montage_streams"}


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
    "montage_contracts": {"montage_contracts"},
    "montage_streams": {"montage_streams"},
    "montage_common": LIBRARIES,
    "montage_dev": set(PACKAGES),  # anything shipped, never ``tests``
}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_packages_depend_only_on_the_libraries(package: str) -> None:
    allowed = ALLOWED.get(package, {package, *LIBRARIES})
    bad = {
        (str(f.relative_to(ROOT)), m)
        for f in _files(package)
        for m in imports_of(f)
        if (_top(m) in PACKAGES and _top(m) not in allowed) or _top(m) == "tests"
    }
    assert not bad, f"{package} imports what it may not: {sorted(bad)}"


@pytest.mark.parametrize("path", _files("montage_contracts"), ids=lambda p: p.name)
def test_contracts_import_only_the_standard_library_msgspec_and_each_other(path: Path) -> None:
    stdlib = sys.stdlib_module_names
    bad = {m for m in imports_of(path) if _top(m) not in {*stdlib, "msgspec", "montage_contracts"}}
    assert not bad, f"montage_contracts.{path.stem} imports {sorted(bad)}"


def test_contracts_declare_only_msgspec() -> None:
    """Its declared dependencies say what its imports say: installing it pulls in msgspec only."""
    import tomllib

    project = tomllib.loads((PACKAGES["montage_contracts"].parents[1] / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0] for d in project["dependencies"]] == ["msgspec"]


def _mentions_dev(path: Path) -> bool:
    """An import of montage_dev, or its name in a string (``python -m montage_dev…``, find_spec)."""
    tree = ast.parse(path.read_text(), str(path))
    strings = (n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return any(_top(m) == "montage_dev" for m in imports_of(path)) or any("montage_dev" in s for s in strings)


@pytest.mark.parametrize("package", SHIPPED)
def test_nothing_shipped_uses_the_development_package(package: str) -> None:
    """Not by an import, nor by naming its modules (what ``python -m`` or importlib would run)."""
    bad = [
        str(f.relative_to(ROOT))
        for f in _files(package)
        if str(f.relative_to(ROOT)) not in MAY_USE_DEV and _mentions_dev(f)
    ]
    assert not bad, f"shipped modules that use montage_dev: {bad}"


def test_the_development_package_is_not_a_dependency_of_anything_shipped() -> None:
    """Only the CLI's ``demo`` extra and the workspace's dev group bring it in."""
    import tomllib

    for pyproject in ROOT.glob("*/*/pyproject.toml"):
        if pyproject.parts[-3] not in {"libs", "services", "clients"}:
            continue
        project = tomllib.loads(pyproject.read_text())["project"]
        assert not [d for d in project.get("dependencies", []) if d.startswith("montage-dev")], pyproject
        extras = {
            k
            for k, v in project.get("optional-dependencies", {}).items()
            if any(d.startswith("montage-dev") for d in v)
        }
        assert extras <= ({"demo"} if pyproject.parts[-3] == "clients" else set()), (pyproject, extras)
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert not [d for d in root["project"]["dependencies"] if d.startswith("montage-dev")]
    assert "montage-dev" in root["dependency-groups"]["dev"]


def _test_files() -> list[Path]:
    dev = PACKAGES["montage_dev"]
    this = Path(__file__).resolve()  # it names the fakes' old paths to look for them
    return sorted(p for p in (ROOT / "tests").rglob("*.py") if dev not in p.parents and p.resolve() != this)


def _fake_paths(path: Path) -> list[str]:
    """Strings of ``path`` that name the fakes as files (``… / "fakes" / "x.py"``, ``"tests/fakes/…"``)."""
    tree = ast.parse(path.read_text(), str(path))
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return [s for s in strings if s.strip("/") == "fakes" or "fakes/" in s]


def test_tests_reach_the_fakes_only_through_the_development_package() -> None:
    assert not (ROOT / "tests" / "fakes").exists(), "the fakes live in montage_dev.fakes"
    assert (PACKAGES["montage_dev"] / "fakes").is_dir()
    bad: list[tuple[str, str]] = []
    for path in _test_files():
        bad += [(str(path.relative_to(ROOT)), m) for m in imports_of(path) if _top(m) == "tests" and "fakes" in m]
        bad += [(str(path.relative_to(ROOT)), s) for s in _fake_paths(path)]
    assert not bad, f"fakes reached by path or through tests.fakes: {bad}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The rule is not vacuous: a forbidden import in a file is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from montage_orchestrator.store import get_job\n    import redis.asyncio\n")
    assert imports_of(probe) == {"montage_orchestrator.store", "redis.asyncio"}


def test_the_checker_sees_a_use_of_the_development_package(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nARGV = [sys.executable, '-m', 'montage_dev.devstack', 'up']\n")
    assert _mentions_dev(probe)
    probe.write_text("def f():\n    from montage_dev.fakes import ragnarok\n")
    assert _mentions_dev(probe)
    probe.write_text("import montage_common.settings\n")
    assert not _mentions_dev(probe)
    probe.write_text("from pathlib import Path\nFAKES = Path(__file__).parents[1] / 'fakes'\n")
    assert _fake_paths(probe) == ["fakes"]
    probe.write_text("import subprocess\nsubprocess.run(['python', 'tests/fakes/ragnarok.py'])\n")
    assert _fake_paths(probe) == ["tests/fakes/ragnarok.py"]


# --- route paths: declared only in the route table (montage_contracts.routes) -------------------
ROUTE_PREFIXES = ("/api/", "/admin", "/internal")
ROUTE_CALLS = {  # what declares a route in aiohttp: router methods, ``web.get(…)``, RouteTableDef decorators
    *(f"add_{m}" for m in ("get", "post", "put", "patch", "delete", "head", "route", "view", "static", "resource")),
    *("get", "post", "put", "patch", "delete", "head", "route", "view"),
}
# Literal paths allowed outside the table, each with its reason: (file, literal) → why.
PATHS_ALLOWED = {
    ("libs/common/src/montage_common/web/ops.py", "/healthz"): "ops port (OPS_PORT): liveness probe, not the API",
    ("libs/common/src/montage_common/web/ops.py", "/readyz"): "ops port: readiness probe, not the API",
    ("libs/common/src/montage_common/web/ops.py", "/metrics"): "ops port: Prometheus scrape, not the API",
    (
        "services/ragnarok-proxy/src/montage_ragnarok/ragnarok.py",
        "/api/v1/workflows",
    ): "RAGNAROK's API (a client of it)",
    (
        "services/ragnarok-proxy/src/montage_ragnarok/ragnarok.py",
        "/api/v1/workflows/",
    ): "RAGNAROK's API (a client of it)",
    ("services/ragnarok-proxy/src/montage_ragnarok/trinity.py", "/api/v1/enrich"): "Trinity's API (a client of it)",
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of string statements (docstrings, attribute docs): prose about routes, not paths in use."""
    return {
        id(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
    }


def _literal_head(node: ast.AST) -> str | None:
    """A string literal, or an f-string's leading literal text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def route_paths(path: Path) -> list[str]:
    """Paths of ``path`` that only the route table may spell: a string (or a literal piece of an
    f-string, as in ``f"{base}/api/…"``) starting with a route prefix, and any literal path given
    to a call that declares a route."""
    tree = ast.parse(path.read_text(), str(path))
    prose = _docstrings(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            if node.value.startswith(ROUTE_PREFIXES):
                found.append(node.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ROUTE_CALLS:
            heads = [_literal_head(a) for a in node.args[:2]]
            found += [h for h in heads if h is not None and h.startswith("/") and not h.startswith(ROUTE_PREFIXES)]
    return found


@pytest.mark.parametrize("package", sorted(set(SHIPPED) - {"montage_contracts"}))
def test_route_paths_are_declared_only_in_the_route_table(package: str) -> None:
    """Handlers are bound by operation id and callers build URLs with ``route(op).url(…)``; the
    fakes of third-party services (``montage_dev``) declare those services' paths and are not checked."""
    bad = [
        (rel, p)
        for f in _files(package)
        for p in route_paths(f)
        if (rel := str(f.relative_to(ROOT)), p) not in PATHS_ALLOWED
    ]
    assert not bad, f"route paths outside montage_contracts.routes: {bad}"


def test_the_route_path_checker_sees_a_declaration(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        '"""Serves ``/api/v1/jobs``."""\n'
        "def add(app, h, base, job):\n"
        '    """``GET /api/v1/x`` (prose)."""\n'
        '    app.router.add_get("/api/v1/jobs", h)\n'
        '    app.router.add_route("GET", "/demo", h)\n'
        '    web.post(f"/admin/{job}", h)\n'
        '    return session.get(f"{base}/internal/health")\n'
    )
    assert sorted(route_paths(probe)) == ["/admin/", "/api/v1/jobs", "/demo", "/internal/health"]


# --- bodies: handlers answer the contract's Structs, never dict literals --------------------------
BODY_CALLS = {"respond", "json_response"}  # the services' ways to answer a JSON body
SERVICES = ("montage_gateway", "montage_orchestrator", "montage_ragnarok")


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def dict_bodies(path: Path) -> list[int]:
    """Lines of ``path`` where ``respond(…)`` or ``(web.)json_response(…)`` is given a dict built in
    place (a literal or a comprehension) as its body."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and _callee(node) in BODY_CALLS:
            bodies = [*node.args[:1], *(k.value for k in node.keywords if k.arg in ("body", "data"))]
            if any(isinstance(b, ast.Dict | ast.DictComp) for b in bodies):
                found.append(node.lineno)
    return found


@pytest.mark.parametrize("package", SERVICES)
def test_no_service_handler_answers_a_dict_literal(package: str) -> None:
    """Bodies are the Structs of ``montage_contracts.api`` (encoded by msgspec), so a body cannot
    drift from the document; the orchestrator's ``respond`` takes only a Struct (``http.respond``)."""
    bad = [(str(f.relative_to(ROOT)), line) for f in _files(package) for line in dict_bodies(f)]
    assert not bad, f"dict literal bodies (use a montage_contracts.api Struct): {bad}"


def test_the_body_checker_sees_a_dict_literal(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def h(x):\n"
        '    respond({"job_id": x})\n'
        "    web.json_response({k: 1 for k in x}, status=201)\n"
        "    respond(api.Job(job_id=x))\n"
        "    json_response(body={'a': 1})\n"
    )
    assert dict_bodies(probe) == [2, 3, 5]


# --- vocabularies: statuses and codes are spelled only by their enums -----------------------------
def _vocabulary() -> set[str]:
    from montage_contracts.errors import ErrorCode
    from montage_contracts.pipeline import JobStatus, StageStatus

    return {*(s.value for s in JobStatus), *(s.value for s in StageStatus), *(c.value for c in ErrorCode)}


VOCABULARY = _vocabulary()
KEYED = {"status", "code", "error_code", "job_status"}  # keyword arguments and dict keys that hold one
# String constants equal to a status or code that are allowed outside montage_contracts, each with
# its reason: (file, value) → why.
VOCABULARY_ALLOWED = {
    ("services/orchestrator/src/montage_orchestrator/health.py", "failed"): (
        "a dependency's state in the health report (api.DependencyState), not a job's status"
    ),
    ("services/orchestrator/src/montage_orchestrator/reconciler.py", "failed"): (
        "the outcome label of a redispatch metric, not a job's status"
    ),
    ("services/orchestrator/src/montage_orchestrator/store.py", "completed"): (
        "the name of an argument of the SQL function orchestrator_apply (SQL text), not a status"
    ),
    ("libs/streams/src/montage_streams/_consumer.py", "TIMEOUT"): (
        "montage_streams imports no other Montage package; the runtime's own code for a handler timeout"
    ),
}


def _constants(node: ast.AST | None) -> list[ast.Constant]:
    """The string constants of an expression that stand for its value itself: the constant, an
    ``a if c else b``'s branches, a tuple's, list's or set's elements."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node]
    if isinstance(node, ast.IfExp):
        return _constants(node.body) + _constants(node.orelse)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [c for e in node.elts for c in _constants(e)]
    return []


def bare_vocabulary(path: Path) -> list[tuple[int, str]]:
    """``(line, value)`` of string constants equal to a ``JobStatus``, ``StageStatus`` or
    ``ErrorCode`` value used as one: compared (``==``, ``in``, …), assigned, passed as ``status=`` /
    ``code=``, or stored under such a key in a dict. SQL text, log messages and prose never equal a
    bare value, so they are not caught."""
    found: list[ast.Constant] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            found += [c for side in (node.left, *node.comparators) for c in _constants(side)]
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign) or (
            isinstance(node, ast.keyword) and node.arg in KEYED
        ):
            found += _constants(node.value)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value in KEYED:
                    found += _constants(value)
        elif isinstance(node, ast.arguments):
            found += [c for d in (*node.defaults, *node.kw_defaults) for c in _constants(d)]
    return sorted((c.lineno, c.value) for c in found if c.value in VOCABULARY)


@pytest.mark.parametrize("package", sorted(set(SHIPPED) - {"montage_contracts"}))
def test_statuses_and_codes_are_spelled_only_by_their_enums(package: str) -> None:
    """A status or a code outside ``montage_contracts`` is ``JobStatus.X`` / ``StageStatus.X`` /
    ``ErrorCode.X``: one name per meaning, and a typo is an AttributeError, not a silent mismatch."""
    bad = [
        (rel, line, value)
        for f in _files(package)
        for line, value in bare_vocabulary(f)
        if ((rel := str(f.relative_to(ROOT))), value) not in VOCABULARY_ALLOWED
    ]
    assert not bad, f"bare status or code strings (use the enums of montage_contracts): {bad}"


def test_the_vocabulary_checker_sees_bare_strings(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f(row, x='queued'):\n"
        '    """A job "failed" here is prose."""\n'
        '    if row["status"] == "completed":\n'
        '        status = "failed" if x else "processing"\n'
        '    fail(code="TIMEOUT")\n'
        "    q = \"SELECT * FROM jobs WHERE status = 'queued'\"\n"
        '    return {"status": "running", "text": "failed"} if row in ("CANCELLED",) else None\n'
    )
    assert bare_vocabulary(probe) == [
        (1, "queued"),
        (3, "completed"),
        (4, "failed"),
        (4, "processing"),
        (5, "TIMEOUT"),
        (7, "CANCELLED"),
        (7, "running"),
    ]


def test_every_vocabulary_exception_is_still_needed() -> None:
    """An allow-list entry that matches nothing any more is removed, so the list stays the truth."""
    used = {
        (str(f.relative_to(ROOT)), value)
        for package in sorted(set(SHIPPED) - {"montage_contracts"})
        for f in _files(package)
        for _, value in bare_vocabulary(f)
    }
    assert set(VOCABULARY_ALLOWED) <= used, set(VOCABULARY_ALLOWED) - used


# --- the rooms of montage_stages: no room imports one above it -----------------------------------
STAGES_SRC = PACKAGES["montage_stages"]
# From the top down: the package's own modules (the worker process, the one-process pipeline), the
# six stages, the provider seams, local media, and what every stage runs with.
STAGE_ROOMS = ["montage_stages", "stages", "providers", "media", "runtime"]
# Imports a room makes of a room above it, each with its reason: (file, module) → why.
ROOM_IMPORTS_ALLOWED = {
    (
        "services/stage-workers/src/montage_stages/runtime/context.py",
        "montage_stages.stages.clip_fanout",
    ): "type only (under TYPE_CHECKING): the context carries video_generator's fan-out link",
}


def room_of(module: str) -> str:
    """The room of a ``montage_stages`` module: its subpackage, or the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGE_ROOMS else "montage_stages"


def room_violations() -> list[tuple[str, str]]:
    bad: list[tuple[str, str]] = []
    for f in _files("montage_stages"):
        rel = str(f.relative_to(ROOT))
        dotted = "montage_stages." + ".".join(f.relative_to(STAGES_SRC).with_suffix("").parts)
        level = STAGE_ROOMS.index(room_of(dotted))
        for m in imports_of(f):
            if _top(m) != "montage_stages" or (rel, m) in ROOM_IMPORTS_ALLOWED:
                continue
            if m == "montage_stages" or STAGE_ROOMS.index(room_of(m)) < level:
                bad.append((rel, m))
    return sorted(bad)


def test_montage_stages_rooms_import_only_downward() -> None:
    """Stages may use providers, media and the runtime; providers media and the runtime; media the
    runtime; the runtime nothing else; and no room uses the worker process above them."""
    assert {p.name for p in STAGES_SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(STAGE_ROOMS[1:])
    assert not room_violations(), f"montage_stages rooms importing upward: {room_violations()}"


def test_no_flat_modules_left_beside_the_rooms() -> None:
    """New code goes into a room; the package itself holds only the worker process's modules."""
    flat = {p.name for p in STAGES_SRC.glob("*.py")}
    assert flat == {"__init__.py", "__main__.py", "worker.py", "local_pipeline.py", "faults.py"}, flat


def test_the_stage_table_names_every_stage_explicitly() -> None:
    """``stages.PROCESS`` imports each stage module by name (no loading by a computed name) and
    lists them in ``PIPELINE`` order."""
    from montage_contracts.pipeline import STAGES
    from montage_stages.stages import PROCESS

    assert tuple(PROCESS) == tuple(STAGES)
    assert all(fn.__module__ == f"montage_stages.stages.{name}" for name, fn in PROCESS.items())
    table = ast.parse((STAGES_SRC / "stages" / "__init__.py").read_text())
    imported = {
        alias.name
        for node in ast.walk(table)
        if isinstance(node, ast.ImportFrom) and node.module == "montage_stages.stages"
        for alias in node.names
    }
    assert imported >= set(STAGES)
    loaders = [
        rel
        for f in _files("montage_stages")
        if "import_module" in f.read_text() or "__import__" in f.read_text()
        if (rel := str(f.relative_to(ROOT)))
    ]
    assert not loaders, f"modules loaded by a computed name: {loaders}"


def test_the_room_checker_sees_an_upward_import(tmp_path: Path) -> None:
    assert room_of("montage_stages.media.ffmpeg") == "media"
    assert room_of("montage_stages.worker") == "montage_stages"
    assert room_of("montage_stages.stages") == "stages"  # the stage table
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from montage_stages.stages import audio_parser\n")
    assert imports_of(probe) == {"montage_stages.stages"}
    assert STAGE_ROOMS.index(room_of("montage_stages.stages")) < STAGE_ROOMS.index(room_of("montage_stages.media.x"))


def test_every_python_m_of_montage_stages_names_a_module() -> None:
    """``python -m montage_stages.…`` in a script or test names a module that exists (the sample
    song is ``montage_stages.media.synth`` since the rooms)."""
    import importlib.util
    import re

    argv = re.compile(r"""["']-m["'],\s*["'](montage_stages[\w.]*)["']""")
    sources = [p for d in ("bench", "tools", "tests", "clients", "services") for p in (ROOT / d).rglob("*.py")]
    named = {(str(p.relative_to(ROOT)), m) for p in sources for m in argv.findall(p.read_text())}
    assert named, "the check found no python -m montage_stages call at all"
    missing = sorted((f, m) for f, m in named if importlib.util.find_spec(m) is None)
    assert not missing, f"python -m of modules that do not exist: {missing}"
