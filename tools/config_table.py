"""Print the README's configuration table from the settings classes themselves.

Every field of every service's settings Struct is one environment variable (its upper-cased
name). The description is the field's ``msgspec.Meta(description=…)``, read from its type.
``python tools/config_table.py`` prints the table (``--write`` updates the README, ``make docs``); ``tests/test_readme.py`` checks that the
README carries exactly this table, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
from montage_cli.settings import CliSettings
from montage_common.settings import CommonSettings
from montage_dev.devstack import StackSettings
from montage_gateway.settings import GatewaySettings
from montage_orchestrator.settings import OrchestratorSettings
from montage_ragnarok.settings import ProxySettings
from montage_stages.worker import WorkerSettings

SERVICES: dict[str, type[msgspec.Struct]] = {
    "all": CommonSettings,
    "gateway": GatewaySettings,
    "orchestrator": OrchestratorSettings,
    "stage-workers": WorkerSettings,
    "ragnarok-proxy": ProxySettings,
    "cli": CliSettings,
    "make up": StackSettings,
}


def descriptions(cls: type[msgspec.Struct]) -> dict[str, str]:
    """``{field: description}`` from each field's ``Annotated[..., Meta(description=...)]``."""
    out: dict[str, str] = {}
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        extra = getattr(f.type, "extra_json_schema", None) or {}
        if extra.get("description"):
            out[f.name] = str(extra["description"])
    return out


def table() -> str:
    rows: dict[str, dict[str, object]] = {}
    common = {f.name for f in msgspec.structs.fields(CommonSettings)}
    for service, cls in SERVICES.items():
        notes = descriptions(cls)
        for f in msgspec.structs.fields(cls):
            if service != "all" and f.name in common and f.name != "port":
                continue
            env = f.name.upper()
            default = f.default if f.default is not msgspec.NODEFAULT else "(required)"
            row = rows.setdefault(env, {"default": {}, "services": [], "desc": notes.get(f.name, "")})
            row["services"].append(service)  # type: ignore[union-attr]
            row["default"][service] = default  # type: ignore[index]
            if not row["desc"]:
                row["desc"] = notes.get(f.name, "")
    lines = ["| variable | default | used by | meaning |", "|---|---|---|---|"]
    for env in sorted(rows, key=lambda e: (rows[e]["services"] != ["all"], e)):
        row = rows[env]
        defaults: dict[str, object] = row["default"]  # type: ignore[assignment]
        distinct = {repr(v) for v in defaults.values()}
        if len(distinct) == 1:
            shown = f"`{next(iter(defaults.values()))!s}`"
        else:
            shown = ", ".join(f"{s}: `{v!s}`" for s, v in defaults.items())
        services = ", ".join(row["services"])  # type: ignore[arg-type]
        desc = str(row["desc"]).replace("|", "\\|")
        shown = shown.replace("|", "\\|")
        lines.append(f"| `{env}` | {shown} | {services} | {desc} |")
    return "\n".join(lines) + "\n"


def write_readme(path: Path) -> None:
    """Replace the table between the README's config-table markers."""
    text = path.read_text()
    start, end = "<!-- config-table:start -->\n", "<!-- config-table:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    path.write_text(head + start + table() + end + tail)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_readme(Path(__file__).resolve().parents[1] / "README.md")
    else:
        sys.stdout.write(table())
