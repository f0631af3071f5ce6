"""The one source of Montage's Prometheus rules and Grafana dashboard.

Writes three files from the definitions below (``--write``), or checks that they are current
(``--check``, what ``tests/deploy/test_monitoring.py`` does):

- ``deploy/prometheus/rules.yml``: the plain rules file, for Prometheus without the Operator
  (``rule_files:``);
- ``deploy/k8s/components/prometheus-operator/prometheus-rules.yaml``: the same groups as a
  ``PrometheusRule`` (label ``release: kube-prometheus-stack``, kube-prometheus-stack's default
  rule selector);
- ``deploy/grafana/montage.json``: the Grafana dashboard.

Every alert gets ``annotations.runbook_url`` = ``RUNBOOK_BASE#<alert name in lower case>``; each
anchor is a ``### <AlertName>`` section of docs/operations.md (the tests check both). To link
runbooks from Alertmanager to where your copy of the repository is browsable, set
``RUNBOOK_BASE`` to its URL and run ``python tools/monitoring.py --write``.

Conventions the rules rely on: scrape jobs are named after ``app.kubernetes.io/name``
(``gateway``, ``orchestrator``, ``ragnarok-proxy``, ``stage-<stage>``), which the ServiceMonitor
and PodMonitor (``jobLabel``) do; docs/operations.md shows the relabelling for annotation-based
scraping.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml
from montage_contracts.pipeline import PIPELINE

ROOT = Path(__file__).resolve().parents[1]
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules.yml"
OPERATOR_FILE = ROOT / "deploy" / "k8s" / "components" / "prometheus-operator" / "prometheus-rules.yaml"
DASHBOARD_FILE = ROOT / "deploy" / "grafana" / "montage.json"
RUNBOOK_BASE = "docs/operations.md"
# The Helm release label kube-prometheus-stack selects PrometheusRules (and monitors) by.
RELEASE = "kube-prometheus-stack"

# The pipeline's stages, from their one home (run with the workspace's Python: `make install`).
STAGES = tuple(spec.name for spec in PIPELINE)
HTTP_JOBS = ("gateway", "orchestrator", "ragnarok-proxy")
STAGE_JOBS = tuple("stage-" + s.replace("_", "-") for s in STAGES)
JOBS = HTTP_JOBS + STAGE_JOBS
JOB_REGEX = "|".join(JOBS)

# --- thresholds (tune here, then --write) ------------------------------------------------
# One gateway process held 10 000 SSE connections at p99 11 ms and 264 MiB RSS
# (docs/benchmarks.md); the pod's memory limit is 512 MiB. Alert at 80 % of that.
SSE_CAPACITY_PER_POD = 10_000
SSE_NEAR_CAPACITY = 0.8
# Provider spend the deployment budgets per day (US dollars). The fast-burn alert fires when the
# last hour's spend rate would use two days' budget in one; the slow one when the last six
# hours' rate exceeds the daily budget.
COST_BUDGET_DOLLARS_PER_DAY = 1000
STAGE_ERROR_RATIO = 0.10
JOB_FAILURE_RATIO = 0.20


def _expr(text: str) -> str:
    return textwrap.dedent(text).strip()


def _runbook(alert: str) -> str:
    return f"{RUNBOOK_BASE}#{alert.lower()}"


def _alert(
    name: str,
    expr: str,
    severity: str,
    summary: str,
    description: str,
    *,
    for_: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": _expr(expr)}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity, **(labels or {})}
    rule["annotations"] = {"summary": summary, "description": description, "runbook_url": _runbook(name)}
    return rule


RECORDING: list[dict[str, Any]] = [
    {
        "record": "service:montage_http_requests:rate5m",
        "expr": "sum by (service) (rate(montage_http_requests_total[5m]))",
    },
    {
        "record": "service:montage_http_errors:ratio_rate5m",
        "expr": _expr("""
            sum by (service) (rate(montage_http_requests_total{status=~"5.."}[5m]))
            /
            clamp_min(sum by (service) (rate(montage_http_requests_total[5m])), 1e-9)
        """),
    },
    # SSE streams stay open for minutes: they are left out of request latency.
    {
        "record": "service:montage_http_request_duration_seconds:p95_5m",
        "expr": _expr("""
            histogram_quantile(0.95,
              sum by (service, le) (rate(montage_http_request_duration_seconds_bucket{route!~".*/stream"}[5m])))
        """),
    },
    {
        "record": "stage:montage_stage_duration_seconds:p95_30m",
        "expr": _expr("""
            histogram_quantile(0.95,
              sum by (stage, le) (rate(montage_stage_duration_seconds_bucket[30m])))
        """),
    },
    {
        "record": "stage:montage_stage_failures:rate15m",
        "expr": "sum by (stage, code) (rate(montage_stage_failures_total[15m]))",
    },
    # Every stage run (each attempt) is observed in the duration histogram; failures are counted too.
    {
        "record": "stage:montage_stage_runs:rate15m",
        "expr": "sum by (stage) (rate(montage_stage_duration_seconds_count[15m]))",
    },
    {
        "record": "stage:montage_stage_errors:ratio_rate15m",
        "expr": _expr("""
            sum by (stage) (rate(montage_stage_failures_total[15m]))
            /
            clamp_min(sum by (stage) (rate(montage_stage_duration_seconds_count[15m])), 1e-9)
        """),
    },
    # Every consumer of a group reports the group's numbers: take the max, not the sum.
    {"record": "group:montage_stream_pending:max", "expr": "max by (stream, group) (montage_stream_pending)"},
    {"record": "group:montage_stream_lag_seconds:max", "expr": "max by (stream, group) (montage_stream_lag_seconds)"},
    # Exported by the orchestrator (every replica reports the same figures: max), so they are
    # there when a stage has no worker at all: work waiting (undelivered + delivered-unacked
    # entries of the stage's group) and live workers (heartbeats).
    {"record": "stage:montage_stage_backlog:max", "expr": "max by (stage) (montage_stage_backlog)"},
    {"record": "stage:montage_stage_workers:max", "expr": "max by (stage) (montage_stage_workers)"},
    {"record": "montage:gateway_sse_connections:sum", "expr": "sum(montage_gateway_sse_connections)"},
    {"record": "montage:active_jobs:max", "expr": "max(montage_active_jobs)"},
    {
        "record": "montage:jobs_failed:ratio_rate1h",
        "expr": _expr("""
            sum(rate(montage_jobs_failed_total[1h]))
            /
            clamp_min(sum(rate(montage_jobs_completed_total[1h])) + sum(rate(montage_jobs_failed_total[1h])), 1e-9)
        """),
    },
    # Provider spend in US dollars per hour, over the last hour and the last six hours.
    {
        "record": "montage:job_cost_dollars_per_hour:rate1h",
        "expr": "sum(rate(montage_job_cost_dollars_total[1h])) * 3600",
    },
    {
        "record": "montage:job_cost_dollars_per_hour:rate6h",
        "expr": "sum(rate(montage_job_cost_dollars_total[6h])) * 3600",
    },
]

_budget_per_hour = COST_BUDGET_DOLLARS_PER_DAY / 24
_sse_limit = int(SSE_CAPACITY_PER_POD * SSE_NEAR_CAPACITY)

AVAILABILITY: list[dict[str, Any]] = [
    _alert(
        "MontageStageNoWorkers",
        """
        stage:montage_stage_backlog:max > 0
        and on (stage)
        stage:montage_stage_workers:max == 0
        """,
        "page",
        "{{ $labels.stage }}: work is waiting and no worker is alive",
        "{{ $value }} entries wait on the {{ $labels.stage }} stream and no {{ $labels.stage }} worker has "
        "sent a heartbeat (figures from the orchestrator). Jobs are stuck at this stage.",
        for_="5m",
    ),
    _alert(
        "MontageTargetDown",
        f'up{{job=~"{JOB_REGEX}"}} == 0',
        "ticket",
        "{{ $labels.job }}: scrape target {{ $labels.instance }} is down",
        "Prometheus cannot scrape {{ $labels.instance }} (ops port /metrics) for 5 minutes.",
        for_="5m",
    ),
    _alert(
        "MontageServiceDown",
        f'sum by (job) (up{{job=~"{JOB_REGEX}"}}) == 0',
        "page",
        "{{ $labels.job }}: every target is down",
        "No {{ $labels.job }} pod answers on its ops port.",
        for_="5m",
    ),
    *[
        _alert(
            "MontageTargetAbsent",
            f'absent(up{{job="{job}"}})',
            "page",
            f"{job}: no scrape target at all",
            f"Prometheus has no target for job {job}: the Deployment is gone or scaled to zero, "
            "or the ServiceMonitor/PodMonitor no longer selects it.",
            for_="10m",
            labels={"job": job},
        )
        for job in JOBS
    ],
]

PIPELINE: list[dict[str, Any]] = [
    _alert(
        "MontageStageErrorRatio",
        f"""
        stage:montage_stage_errors:ratio_rate15m > {STAGE_ERROR_RATIO}
        and on (stage)
        stage:montage_stage_runs:rate15m > 0.005
        """,
        "ticket",
        "{{ $labels.stage }}: {{ $value | humanizePercentage }} of stage runs fail",
        f"More than {STAGE_ERROR_RATIO:.0%} of {{{{ $labels.stage }}}} runs raised in the last 15 minutes "
        "(each is retried, then dead-lettered); see stage:montage_stage_failures:rate15m by code.",
        for_="15m",
    ),
    _alert(
        "MontageJobFailureRate",
        f"montage:jobs_failed:ratio_rate1h > {JOB_FAILURE_RATIO} and sum(rate(montage_jobs_created_total[1h])) > 0",
        "page",
        f"More than {JOB_FAILURE_RATIO:.0%} of finished jobs failed in the last hour",
        "Failure ratio {{ $value | humanizePercentage }}; see montage_jobs_failed_total by code.",
        for_="30m",
    ),
    _alert(
        "MontageDeadLetters",
        "sum by (stream, group) (increase(montage_stream_dead_lettered_total[15m])) > 0",
        "ticket",
        "{{ $labels.group }}: dead-letter stream of {{ $labels.stream }} is growing",
        "{{ $value }} entries exhausted their retries in 15 minutes; see the :dead stream (montage queues).",
    ),
    _alert(
        "MontageStreamBacklog",
        "group:montage_stream_lag_seconds:max > 300",
        "page",
        "{{ $labels.group }}: oldest unread entry on {{ $labels.stream }} is over 5 minutes old",
        "Workers are not keeping up; lag {{ $value | humanizeDuration }}.",
        for_="10m",
    ),
    _alert(
        "MontageStreamPendingHigh",
        "group:montage_stream_pending:max > 50",
        "ticket",
        "{{ $labels.group }}: {{ $value }} entries delivered and not acked on {{ $labels.stream }}",
        "Many in-flight entries for a long time: stuck handlers or dead consumers not reclaimed.",
        for_="15m",
    ),
    _alert(
        "MontageStreamHandlerFailures",
        "sum by (stream, group) (rate(montage_stream_failed_total[10m])) > 0.1",
        "ticket",
        "{{ $labels.group }}: handler failures on {{ $labels.stream }}",
        '{{ printf "%.2f" $value }} failures per second (each is retried, then dead-lettered).',
        for_="10m",
    ),
    _alert(
        "MontageStageSlow",
        """
        stage:montage_stage_duration_seconds:p95_30m{stage!~"video_generator|composer"} > 120
        or
        stage:montage_stage_duration_seconds:p95_30m{stage=~"video_generator|composer"} > 600
        """,
        "ticket",
        "{{ $labels.stage }}: p95 stage duration is {{ $value | humanizeDuration }}",
        "Close to STAGE_TIMEOUT_SECONDS (900 s) for renders; check worker CPU and providers.",
        for_="30m",
    ),
    _alert(
        "MontageCostBurnFast",
        f"montage:job_cost_dollars_per_hour:rate1h > {2 * _budget_per_hour:g}",
        "page",
        "Provider spend is burning two days' budget per day",
        f"Spend rate {{{{ $value | humanize }}}} $/h over the last hour; the budget is "
        f"{COST_BUDGET_DOLLARS_PER_DAY} $/day ({_budget_per_hour:.1f} $/h).",
        for_="15m",
    ),
    _alert(
        "MontageCostBurnSlow",
        f"montage:job_cost_dollars_per_hour:rate6h > {_budget_per_hour:g}",
        "ticket",
        "Provider spend is over budget",
        f"Spend rate {{{{ $value | humanize }}}} $/h over the last six hours; the budget is "
        f"{COST_BUDGET_DOLLARS_PER_DAY} $/day ({_budget_per_hour:.1f} $/h).",
        for_="1h",
    ),
]

HTTP: list[dict[str, Any]] = [
    _alert(
        "MontageHighErrorRate",
        "service:montage_http_errors:ratio_rate5m > 0.05 and service:montage_http_requests:rate5m > 0.1",
        "page",
        "{{ $labels.service }}: more than 5% of requests fail with 5xx",
        "5xx ratio is {{ $value | humanizePercentage }} over the last 5 minutes.",
        for_="10m",
    ),
    _alert(
        "MontageSlowRequests",
        "service:montage_http_request_duration_seconds:p95_5m > 2",
        "ticket",
        "{{ $labels.service }}: p95 request latency above 2 s",
        "p95 latency (SSE excluded) is {{ $value | humanizeDuration }}.",
        for_="15m",
    ),
    _alert(
        "MontageSSENearCapacity",
        f"montage_gateway_sse_connections > {_sse_limit}",
        "ticket",
        "{{ $labels.instance }}: {{ $value }} open SSE connections",
        f"Above {SSE_NEAR_CAPACITY:.0%} of the {SSE_CAPACITY_PER_POD} connections one gateway process was "
        "measured to hold (docs/benchmarks.md): the HPA is at its maximum or not scaling.",
        for_="10m",
    ),
    _alert(
        "MontageSSERefused",
        "sum by (cap) (rate(montage_gateway_sse_refused_total[10m])) > 0.5",
        "info",
        "SSE connections refused at the {{ $labels.cap }} cap",
        "Clients are hitting SSE_MAX_PER_JOB / SSE_MAX_PER_USER.",
        for_="10m",
    ),
    _alert(
        "MontageSSEDropped",
        "sum by (reason) (rate(montage_gateway_sse_dropped_total[10m])) > 1",
        "ticket",
        "Gateway drops SSE connections ({{ $labels.reason }})",
        '{{ printf "%.2f" $value }} drops per second.',
        for_="10m",
    ),
    _alert(
        "MontageUpstreamErrors",
        "sum by (upstream) (rate(montage_gateway_upstream_errors_total[5m])) > 0.5",
        "page",
        "Gateway calls to {{ $labels.upstream }} fail",
        '{{ printf "%.2f" $value }} failed calls per second.',
        for_="5m",
    ),
    _alert(
        "MontageRagnarokUnavailable",
        """
        sum(rate(montage_ragnarok_calls_total{status=~"unreachable|timeout|5.."}[5m]))
        /
        clamp_min(sum(rate(montage_ragnarok_calls_total[5m])), 1e-9) > 0.5
        """,
        "page",
        "Most calls to RAGNAROK fail",
        "{{ $value | humanizePercentage }} of RAGNAROK calls fail, time out or do not connect.",
        for_="10m",
    ),
    _alert(
        "MontageRagnarokPollLag",
        "max(montage_ragnarok_poll_lag_last_seconds) > 30",
        "ticket",
        "ragnarok-proxy polls start more than 30 s late",
        "Poll lag {{ $value | humanizeDuration }}: add replicas or raise POLL_CONCURRENCY.",
        for_="10m",
    ),
]


def rule_groups() -> list[dict[str, Any]]:
    return [
        {"name": "montage.recording", "interval": "30s", "rules": RECORDING},
        {"name": "montage.availability", "rules": AVAILABILITY},
        {"name": "montage.pipeline", "rules": PIPELINE},
        {"name": "montage.http", "rules": HTTP},
    ]


# --- dashboard ----------------------------------------------------------------------------------
def _panel(title: str, unit: str, targets: list[tuple[str, str]], description: str = "") -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": _expr(expr), "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


PANELS: list[dict[str, Any]] = [
    _panel(
        "Job throughput",
        "short",
        [
            ("sum(rate(montage_jobs_created_total[5m])) * 3600", "created / h"),
            ("sum(rate(montage_jobs_completed_total[5m])) * 3600", "completed / h"),
            ("sum by (code) (rate(montage_jobs_failed_total[5m])) * 3600", "failed {{code}} / h"),
        ],
        "Jobs per hour (orchestrator).",
    ),
    _panel(
        "Stage throughput",
        "ops",
        [("sum by (stage) (rate(montage_stage_duration_seconds_count[5m]))", "{{stage}}")],
        "Stage runs per second (every attempt), by stage.",
    ),
    _panel(
        "Stage latency p95 (worker run time)",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (stage, le) (rate(montage_stage_duration_seconds_bucket[15m])))",
                "{{stage}} p95",
            ),
            (
                "histogram_quantile(0.5, sum by (stage, le) (rate(montage_stage_duration_seconds_bucket[15m])))",
                "{{stage}} p50",
            ),
        ],
    ),
    _panel(
        "Stage latency p95 (dispatch to result)",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (stage, le) (rate(montage_stage_roundtrip_seconds_bucket[15m])))",
                "{{stage}}",
            )
        ],
        "As the orchestrator sees it: queueing plus the run.",
    ),
    _panel(
        "Queue depth (work waiting) and workers",
        "short",
        [
            ("max by (stage) (montage_stage_backlog)", "{{stage}} waiting"),
            ("max by (stage) (montage_stage_workers)", "{{stage}} workers"),
        ],
        "Undelivered plus delivered-unacked entries of each stage's group, and live workers (orchestrator).",
    ),
    _panel(
        "Stream lag and pending (from the consumers)",
        "short",
        [
            ("max by (group) (montage_stream_pending)", "{{group}} pending"),
            ("max by (group) (montage_stream_lag_seconds)", "{{group}} lag (s)"),
        ],
    ),
    _panel("Active jobs", "short", [("max(montage_active_jobs)", "queued or processing")]),
    _panel(
        "Provider cost per hour",
        "currencyUSD",
        [
            ("sum(rate(montage_job_cost_dollars_total[1h])) * 3600", "total $/h"),
            ("sum by (stage) (rate(montage_job_cost_dollars_total[1h])) * 3600", "{{stage}} $/h"),
        ],
    ),
    _panel(
        "SSE connections",
        "short",
        [
            ("sum(montage_gateway_sse_connections)", "total"),
            ("sum by (instance) (montage_gateway_sse_connections)", "{{instance}}"),
        ],
    ),
    _panel(
        "HTTP requests and 5xx ratio",
        "reqps",
        [
            ("sum by (service) (rate(montage_http_requests_total[5m]))", "{{service}}"),
            (
                'sum by (service) (rate(montage_http_requests_total{status=~"5.."}[5m])) '
                "/ clamp_min(sum by (service) (rate(montage_http_requests_total[5m])), 1e-9)",
                "{{service}} 5xx ratio",
            ),
        ],
    ),
    _panel(
        "HTTP latency p95 (SSE excluded)",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (service, le) "
                '(rate(montage_http_request_duration_seconds_bucket{route!~".*/stream"}[5m])))',
                "{{service}}",
            )
        ],
    ),
    _panel(
        "Dead letters",
        "short",
        [("sum by (group) (increase(montage_stream_dead_lettered_total[1h]))", "{{group}} / h")],
    ),
]


def dashboard() -> dict[str, Any]:
    panels = []
    for i, panel in enumerate(PANELS):
        panels.append({"id": i + 1, "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8}, **panel})
    return {
        "uid": "montage-overview",
        "title": "Montage",
        "tags": ["montage"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


# --- output -------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

HEADER = (
    "# GENERATED by tools/monitoring.py from its rule definitions: edit that file, then run\n"
    "#   .venv/bin/python tools/monitoring.py --write\n"
    "# tests/deploy/test_monitoring.py fails when this file and the generator disagree.\n"
)


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)


def rendered() -> dict[Path, str]:
    groups = rule_groups()
    plain = (
        HEADER
        + "# Plain Prometheus: list this file under rule_files. With the Prometheus Operator use the\n"
        + "# prometheus-operator kustomize component (the same groups as a PrometheusRule).\n"
        + _dump({"groups": groups})
    )
    operator = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "montage",
            "labels": {"app.kubernetes.io/part-of": "montage", "release": RELEASE},
        },
        "spec": {"groups": groups},
    }
    return {
        RULES_FILE: plain,
        OPERATOR_FILE: HEADER + _dump(operator),
        DASHBOARD_FILE: json.dumps(dashboard(), indent=2) + "\n",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the generated files")
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path.relative_to(ROOT))
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.write:
        for path in stale:
            print(f"wrote {path}")
        return 0
    if stale:
        print("stale: " + ", ".join(map(str, stale)) + " (run: python tools/monitoring.py --write)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
