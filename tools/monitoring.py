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

Labels the rules rely on, the same with the Prometheus Operator and with a plain scrape config:

- ``namespace``: the pod's namespace. Every rule aggregates ``by (namespace, ...)`` and every
  alert names it, so environments sharing one Prometheus (``montage``, ``montage-dev``, ...) are
  judged apart: one namespace's healthy gateway never hides another's outage.
- ``job``: the pod's ``app.kubernetes.io/name`` (``gateway``, ``orchestrator``,
  ``ragnarok-proxy``, ``stage-<stage>``): the ServiceMonitor and PodMonitor set it (``jobLabel``)
  and docs/operations.md shows the same relabelling for annotation-based scraping. Rules match
  jobs only through :func:`_jobs` and group by ``job`` rather than by the application's
  ``service`` label, which the Operator's ServiceMonitor overwrites with the Kubernetes
  Service's name (the application's becomes ``exported_service``).

Nothing else of the target (``instance``, ``pod``, ``service``, ``endpoint``, ``container``) is
aggregated on; ``instance`` is only named in the per-target alerts.
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
DASHBOARD_CONFIGMAP_FILE = ROOT / "deploy" / "k8s" / "components" / "prometheus-operator" / "grafana-dashboard.yaml"
RUNBOOK_BASE = "docs/operations.md"
# The Helm release label kube-prometheus-stack selects PrometheusRules (and monitors) by.
RELEASE = "kube-prometheus-stack"
# kube-prometheus-stack's Grafana sidecar loads dashboards from ConfigMaps with this label
# (grafana.sidecar.dashboards.label / labelValue, the chart's defaults).
DASHBOARD_LABEL = ("grafana_dashboard", "1")

# The pipeline's stages, from their one home (run with the workspace's Python: `make install`).
STAGES = tuple(spec.name for spec in PIPELINE)
HTTP_JOBS = ("gateway", "orchestrator", "ragnarok-proxy")
STAGE_JOBS = tuple("stage-" + s.replace("_", "-") for s in STAGES)
JOBS = HTTP_JOBS + STAGE_JOBS
DEPENDENCIES = {"redis": "Redis", "postgres": "Postgres"}

# --- thresholds (tune here, then --write) ------------------------------------------------
# One gateway process held 10 000 SSE connections at p99 11 ms and 264 MiB RSS
# (docs/benchmarks.md); the pod's memory limit is 512 MiB. Alert at 80 % of that.
SSE_CAPACITY_PER_POD = 10_000
SSE_NEAR_CAPACITY = 0.8
# Provider spend each namespace budgets per day (US dollars). The fast-burn alert fires when the
# last hour's spend rate would use two days' budget in one; the slow one when the last six
# hours' rate exceeds the daily budget.
COST_BUDGET_DOLLARS_PER_DAY = 1000
STAGE_ERROR_RATIO = 0.10
# Completed over completed + failed (a cancel is neither), over the last hour.
JOB_SUCCESS_RATIO = 0.80
JOB_MIN_FINISHED_PER_HOUR = 5  # fewer finished jobs than this: too few to judge a ratio
# The last hour's mean cost per completed job against the previous week's (before that hour).
JOB_COST_RISE = 1.5


def _expr(text: str) -> str:
    return textwrap.dedent(text).strip()


def _runbook(alert: str) -> str:
    return f"{RUNBOOK_BASE}#{alert.lower()}"


def _jobs(*names: str) -> str:
    """The one matcher of Montage's scrape jobs (module docstring: what ``job`` holds)."""
    return f'job=~"{"|".join(names or JOBS)}"'


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
    """An alert whose summary starts with the namespace it is about (every expression keeps it)."""
    rule: dict[str, Any] = {"alert": name, "expr": _expr(expr)}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity, **(labels or {})}
    rule["annotations"] = {
        "summary": "[{{ $labels.namespace }}] " + summary,
        "description": description,
        "runbook_url": _runbook(name),
    }
    return rule


_success_ratio = """
    sum by (namespace) (rate(montage_job_duration_seconds_count{outcome="completed"}[1h]))
    /
    clamp_min(sum by (namespace) (rate(montage_job_duration_seconds_count{outcome=~"completed|failed"}[1h])), 1e-9)
"""


def _mean_cost(window: str, offset: str = "") -> str:
    shift = f" offset {offset}" if offset else ""
    return _expr(f"""
        sum by (namespace) (rate(montage_job_total_cost_dollars_sum{{outcome="completed"}}[{window}]{shift}))
        /
        sum by (namespace) (rate(montage_job_total_cost_dollars_count{{outcome="completed"}}[{window}]{shift})) > 0
    """)


RECORDING: list[dict[str, Any]] = [
    {
        "record": "namespace_job:montage_http_requests:rate5m",
        "expr": "sum by (namespace, job) (rate(montage_http_requests_total[5m]))",
    },
    {
        "record": "namespace_job:montage_http_errors:ratio_rate5m",
        "expr": _expr("""
            sum by (namespace, job) (rate(montage_http_requests_total{status=~"5.."}[5m]))
            /
            clamp_min(sum by (namespace, job) (rate(montage_http_requests_total[5m])), 1e-9)
        """),
    },
    # SSE streams stay open for minutes: they are left out of request latency.
    {
        "record": "namespace_job:montage_http_request_duration_seconds:p95_5m",
        "expr": _expr("""
            histogram_quantile(0.95,
              sum by (namespace, job, le) (rate(montage_http_request_duration_seconds_bucket{route!~".*/stream"}[5m])))
        """),
    },
    {
        "record": "namespace_stage:montage_stage_duration_seconds:p95_30m",
        "expr": _expr("""
            histogram_quantile(0.95,
              sum by (namespace, stage, le) (rate(montage_stage_duration_seconds_bucket[30m])))
        """),
    },
    {
        "record": "namespace_stage:montage_stage_failures:rate15m",
        "expr": "sum by (namespace, stage, code) (rate(montage_stage_failures_total[15m]))",
    },
    # Every stage run (each attempt) is observed in the duration histogram; failures are counted too.
    {
        "record": "namespace_stage:montage_stage_runs:rate15m",
        "expr": "sum by (namespace, stage) (rate(montage_stage_duration_seconds_count[15m]))",
    },
    {
        "record": "namespace_stage:montage_stage_errors:ratio_rate15m",
        "expr": _expr("""
            sum by (namespace, stage) (rate(montage_stage_failures_total[15m]))
            /
            clamp_min(sum by (namespace, stage) (rate(montage_stage_duration_seconds_count[15m])), 1e-9)
        """),
    },
    # Every consumer of a group reports the group's numbers: take the max, not the sum.
    {
        "record": "namespace_group:montage_stream_pending:max",
        "expr": "max by (namespace, stream, group) (montage_stream_pending)",
    },
    {
        "record": "namespace_group:montage_stream_lag_seconds:max",
        "expr": "max by (namespace, stream, group) (montage_stream_lag_seconds)",
    },
    # Exported by the orchestrator (every replica reports the same figures: max), so they are
    # there when a stage has no worker at all: work waiting (undelivered + delivered-unacked
    # entries of the stage's group) and live workers (heartbeats).
    {
        "record": "namespace_stage:montage_stage_backlog:max",
        "expr": "max by (namespace, stage) (montage_stage_backlog)",
    },
    {
        "record": "namespace_stage:montage_stage_workers:max",
        "expr": "max by (namespace, stage) (montage_stage_workers)",
    },
    {
        "record": "namespace:montage_gateway_sse_connections:sum",
        "expr": "sum by (namespace) (montage_gateway_sse_connections)",
    },
    {"record": "namespace:montage_active_jobs:max", "expr": "max by (namespace) (montage_active_jobs)"},
    # Jobs: the spec's success ratio, finished jobs, cost per completed job (job_metrics.py).
    {"record": "namespace:montage_job_success:ratio_rate1h", "expr": _expr(_success_ratio)},
    {
        "record": "namespace:montage_jobs_finished:increase1h",
        "expr": 'sum by (namespace) (increase(montage_job_duration_seconds_count{outcome=~"completed|failed"}[1h]))',
    },
    {"record": "namespace:montage_job_cost_dollars:mean1h", "expr": _mean_cost("1h")},
    # Provider spend in US dollars per hour, over the last hour and the last six hours.
    {
        "record": "namespace:montage_job_cost_dollars_per_hour:rate1h",
        "expr": "sum by (namespace) (rate(montage_job_cost_dollars_total[1h])) * 3600",
    },
    {
        "record": "namespace:montage_job_cost_dollars_per_hour:rate6h",
        "expr": "sum by (namespace) (rate(montage_job_cost_dollars_total[6h])) * 3600",
    },
]

# A week's range is costly to read every 30 s and changes slowly: its own group, every 5 minutes.
RECORDING_SLOW: list[dict[str, Any]] = [
    {"record": "namespace:montage_job_cost_dollars:mean7d_before1h", "expr": _mean_cost("7d", "1h")},
]

_budget_per_hour = COST_BUDGET_DOLLARS_PER_DAY / 24
_sse_limit = int(SSE_CAPACITY_PER_POD * SSE_NEAR_CAPACITY)

AVAILABILITY: list[dict[str, Any]] = [
    _alert(
        "MontageStageNoWorkers",
        """
        namespace_stage:montage_stage_backlog:max > 0
        and on (namespace, stage)
        namespace_stage:montage_stage_workers:max == 0
        """,
        "page",
        "{{ $labels.stage }}: work is waiting and no worker is alive",
        "{{ $value }} entries wait on the {{ $labels.stage }} stream and no {{ $labels.stage }} worker has "
        "sent a heartbeat (figures from the orchestrator). Jobs are stuck at this stage.",
        for_="5m",
    ),
    _alert(
        "MontageTargetDown",
        f"up{{{_jobs()}}} == 0",
        "ticket",
        "{{ $labels.job }}: scrape target {{ $labels.instance }} is down",
        "Prometheus cannot scrape {{ $labels.instance }} (ops port /metrics) for 5 minutes.",
        for_="5m",
    ),
    _alert(
        "MontageServiceDown",
        f"sum by (namespace, job) (up{{{_jobs()}}}) == 0",
        "page",
        "{{ $labels.job }}: every target is down",
        "No {{ $labels.job }} pod answers on its ops port.",
        for_="5m",
    ),
    # A namespace that ran Montage in the last day (any of its targets) but has no target of this
    # job now. (absent() cannot say which namespace lacks it.)
    *[
        _alert(
            "MontageTargetAbsent",
            f"""
            group by (namespace) (max_over_time(up{{{_jobs()}}}[1d]))
            unless on (namespace)
            group by (namespace) (up{{{_jobs(job)}}})
            """,
            "page",
            f"{job}: no scrape target at all",
            f"Prometheus has no target for job {job} in this namespace: the Deployment is gone or scaled to "
            "zero, or the ServiceMonitor/PodMonitor no longer selects it.",
            for_="10m",
            labels={"job": job},
        )
        for job in JOBS
    ],
]

DEPENDENCY: list[dict[str, Any]] = [
    # Every service pings Redis and Postgres in the background (montage_common.dependencies).
    # Down = no pod of the namespace reaches it; one pod that cannot is a ticket.
    *[
        _alert(
            f"Montage{title}Down",
            f'max by (namespace) (montage_dependency_up{{dependency="{dep}"}}) == 0',
            "page",
            f"{title} does not answer any service",
            f"No Montage pod has had an answer from {title} for 2 minutes (montage_dependency_up); "
            "every request and hand-off that needs it fails.",
            for_="2m",
        )
        for dep, title in DEPENDENCIES.items()
    ],
    _alert(
        "MontageDependencyUnreachable",
        """
        min by (namespace, job, dependency) (montage_dependency_up) == 0
        unless on (namespace, dependency)
        max by (namespace, dependency) (montage_dependency_up) == 0
        """,
        "ticket",
        "{{ $labels.job }} cannot reach {{ $labels.dependency }}",
        "Some {{ $labels.job }} pods get no answer from {{ $labels.dependency }} while other pods do: "
        "a NetworkPolicy, DNS, a connection pool exhausted, or one node's network.",
        for_="10m",
    ),
    _alert(
        "MontageDependencySlow",
        "max by (namespace, dependency) (montage_dependency_ping_seconds) > 0.25",
        "ticket",
        "{{ $labels.dependency }} answers slowly",
        "The slowest pod waits {{ $value | humanizeDuration }} for a ping of {{ $labels.dependency }} "
        "(usually under 5 ms): an overloaded server, a saturated network, or a failover.",
        for_="10m",
    ),
]

PIPELINE_RULES: list[dict[str, Any]] = [
    _alert(
        "MontageStageErrorRatio",
        f"""
        namespace_stage:montage_stage_errors:ratio_rate15m > {STAGE_ERROR_RATIO}
        and on (namespace, stage)
        namespace_stage:montage_stage_runs:rate15m > 0.005
        """,
        "ticket",
        "{{ $labels.stage }}: {{ $value | humanizePercentage }} of stage runs fail",
        f"More than {STAGE_ERROR_RATIO:.0%} of {{{{ $labels.stage }}}} runs raised in the last 15 minutes "
        "(each is retried, then dead-lettered); see namespace_stage:montage_stage_failures:rate15m by code.",
        for_="15m",
    ),
    _alert(
        "MontageJobSuccessRatioLow",
        f"""
        namespace:montage_job_success:ratio_rate1h < {JOB_SUCCESS_RATIO}
        and on (namespace)
        namespace:montage_jobs_finished:increase1h >= {JOB_MIN_FINISHED_PER_HOUR}
        """,
        "page",
        f"Fewer than {JOB_SUCCESS_RATIO:.0%} of finished jobs completed in the last hour",
        "Success ratio {{ $value | humanizePercentage }} (cancels not counted); see montage_jobs_failed_total by code.",
        for_="15m",
    ),
    _alert(
        "MontageJobCostRising",
        f"""
        namespace:montage_job_cost_dollars:mean1h
        > on (namespace)
        {JOB_COST_RISE} * namespace:montage_job_cost_dollars:mean7d_before1h
        """,
        "ticket",
        "Cost per completed job rose to {{ $value | humanize }} $",
        f"The last hour's mean cost per completed job is more than {JOB_COST_RISE}x the previous week's: "
        "a provider price change, longer songs, more clips or retries per job.",
        for_="30m",
    ),
    _alert(
        "MontageDeadLetters",
        "sum by (namespace, stream, group) (increase(montage_stream_dead_lettered_total[15m])) > 0",
        "ticket",
        "{{ $labels.group }}: dead-letter stream of {{ $labels.stream }} is growing",
        "{{ $value }} entries exhausted their retries in 15 minutes; see the :dead stream (montage queues).",
    ),
    _alert(
        "MontageStreamBacklog",
        "namespace_group:montage_stream_lag_seconds:max > 300",
        "page",
        "{{ $labels.group }}: oldest unread entry on {{ $labels.stream }} is over 5 minutes old",
        "Workers are not keeping up; lag {{ $value | humanizeDuration }}.",
        for_="10m",
    ),
    _alert(
        "MontageStreamPendingHigh",
        "namespace_group:montage_stream_pending:max > 50",
        "ticket",
        "{{ $labels.group }}: {{ $value }} entries delivered and not acked on {{ $labels.stream }}",
        "Many in-flight entries for a long time: stuck handlers or dead consumers not reclaimed.",
        for_="15m",
    ),
    _alert(
        "MontageStreamHandlerFailures",
        "sum by (namespace, stream, group) (rate(montage_stream_failed_total[10m])) > 0.1",
        "ticket",
        "{{ $labels.group }}: handler failures on {{ $labels.stream }}",
        '{{ printf "%.2f" $value }} failures per second (each is retried, then dead-lettered).',
        for_="10m",
    ),
    _alert(
        "MontageStageSlow",
        """
        namespace_stage:montage_stage_duration_seconds:p95_30m{stage!~"video_generator|composer"} > 120
        or
        namespace_stage:montage_stage_duration_seconds:p95_30m{stage=~"video_generator|composer"} > 600
        """,
        "ticket",
        "{{ $labels.stage }}: p95 stage duration is {{ $value | humanizeDuration }}",
        "Close to STAGE_TIMEOUT_SECONDS (900 s) for renders; check worker CPU and providers.",
        for_="30m",
    ),
    _alert(
        "MontageCostBurnFast",
        f"namespace:montage_job_cost_dollars_per_hour:rate1h > {2 * _budget_per_hour:g}",
        "page",
        "Provider spend is burning two days' budget per day",
        f"Spend rate {{{{ $value | humanize }}}} $/h over the last hour; the budget is "
        f"{COST_BUDGET_DOLLARS_PER_DAY} $/day ({_budget_per_hour:.1f} $/h).",
        for_="15m",
    ),
    _alert(
        "MontageCostBurnSlow",
        f"namespace:montage_job_cost_dollars_per_hour:rate6h > {_budget_per_hour:g}",
        "ticket",
        "Provider spend is over budget",
        f"Spend rate {{{{ $value | humanize }}}} $/h over the last six hours; the budget is "
        f"{COST_BUDGET_DOLLARS_PER_DAY} $/day ({_budget_per_hour:.1f} $/h).",
        for_="1h",
    ),
    _alert(
        "MontageWebhookBacklog",
        "max by (namespace) (montage_webhook_oldest_pending_seconds) > 3600",
        "ticket",
        "Webhook deliveries pending for over an hour",
        "The oldest undelivered webhook is {{ $value | humanizeDuration }} old "
        "(montage_webhook_backlog deliveries pending): receivers fail or refuse, or the delivery loop is stuck.",
        for_="15m",
    ),
]

HTTP: list[dict[str, Any]] = [
    _alert(
        "MontageHighErrorRate",
        """
        namespace_job:montage_http_errors:ratio_rate5m > 0.05
        and on (namespace, job)
        namespace_job:montage_http_requests:rate5m > 0.1
        """,
        "page",
        "{{ $labels.job }}: more than 5% of requests fail with 5xx",
        "5xx ratio is {{ $value | humanizePercentage }} over the last 5 minutes.",
        for_="10m",
    ),
    _alert(
        "MontageSlowRequests",
        "namespace_job:montage_http_request_duration_seconds:p95_5m > 2",
        "ticket",
        "{{ $labels.job }}: p95 request latency above 2 s",
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
        "sum by (namespace, cap) (rate(montage_gateway_sse_refused_total[10m])) > 0.5",
        "info",
        "SSE connections refused at the {{ $labels.cap }} cap",
        "Clients are hitting SSE_MAX_PER_JOB / SSE_MAX_PER_USER.",
        for_="10m",
    ),
    _alert(
        "MontageSSEDropped",
        "sum by (namespace, reason) (rate(montage_gateway_sse_dropped_total[10m])) > 1",
        "ticket",
        "Gateway drops SSE connections ({{ $labels.reason }})",
        '{{ printf "%.2f" $value }} drops per second.',
        for_="10m",
    ),
    _alert(
        "MontageUpstreamErrors",
        "sum by (namespace, upstream) (rate(montage_gateway_upstream_errors_total[5m])) > 0.5",
        "page",
        "Gateway calls to {{ $labels.upstream }} fail",
        '{{ printf "%.2f" $value }} failed calls per second.',
        for_="5m",
    ),
    _alert(
        "MontageRagnarokUnavailable",
        """
        sum by (namespace) (rate(montage_ragnarok_calls_total{status=~"unreachable|timeout|5.."}[5m]))
        /
        clamp_min(sum by (namespace) (rate(montage_ragnarok_calls_total[5m])), 1e-9) > 0.5
        """,
        "page",
        "Most calls to RAGNAROK fail",
        "{{ $value | humanizePercentage }} of RAGNAROK calls fail, time out or do not connect.",
        for_="10m",
    ),
    _alert(
        "MontageRagnarokPollLag",
        "max by (namespace) (montage_ragnarok_poll_lag_last_seconds) > 30",
        "ticket",
        "ragnarok-proxy polls start more than 30 s late",
        "Poll lag {{ $value | humanizeDuration }}: add replicas or raise POLL_CONCURRENCY.",
        for_="10m",
    ),
]


def rule_groups() -> list[dict[str, Any]]:
    return [
        {"name": "montage.recording", "interval": "30s", "rules": RECORDING},
        {"name": "montage.recording.slow", "interval": "5m", "rules": RECORDING_SLOW},
        {"name": "montage.availability", "rules": AVAILABILITY},
        {"name": "montage.dependencies", "rules": DEPENDENCY},
        {"name": "montage.pipeline", "rules": PIPELINE_RULES},
        {"name": "montage.http", "rules": HTTP},
    ]


# --- dashboard ----------------------------------------------------------------------------------
# Every query is scoped to the dashboard's namespace variable.
NS = 'namespace="$namespace"'


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


def _quantiles(metric: str, by: str, window: str, selector: str = "") -> list[tuple[str, str]]:
    sel = f"{NS}, {selector}" if selector else NS
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{window}])))",
            f"{{{{{by}}}}} p{int(q * 100)}",
        )
        for q in (0.95, 0.5)
    ]


PANELS: list[dict[str, Any]] = [
    _panel(
        "Job throughput",
        "short",
        [
            (f"sum(rate(montage_jobs_created_total{{{NS}}}[5m])) * 3600", "created / h"),
            (f"sum(rate(montage_jobs_completed_total{{{NS}}}[5m])) * 3600", "completed / h"),
            (f"sum by (code) (rate(montage_jobs_failed_total{{{NS}}}[5m])) * 3600", "failed {{code}} / h"),
        ],
        "Jobs per hour (orchestrator).",
    ),
    _panel(
        "Job success ratio",
        "percentunit",
        [
            (
                f'sum(rate(montage_job_duration_seconds_count{{{NS}, outcome="completed"}}[1h])) / '
                f'clamp_min(sum(rate(montage_job_duration_seconds_count{{{NS}, outcome=~"completed|failed"}}[1h])), 1e-9)',
                "completed / (completed + failed), 1 h",
            )
        ],
        "The spec's success rate; cancelled jobs are neither (MontageJobSuccessRatioLow below "
        f"{JOB_SUCCESS_RATIO:.0%}).",
    ),
    _panel(
        "Job duration by outcome",
        "s",
        _quantiles("montage_job_duration_seconds", "outcome", "1h"),
        "Creation to the final status (the spec's processing time), per outcome.",
    ),
    _panel(
        "Cost per job",
        "currencyUSD",
        [
            *_quantiles("montage_job_total_cost_dollars", "outcome", "1h"),
            (
                f'sum(rate(montage_job_total_cost_dollars_sum{{{NS}, outcome="completed"}}[1h])) / '
                f'sum(rate(montage_job_total_cost_dollars_count{{{NS}, outcome="completed"}}[1h]))',
                "completed: mean",
            ),
        ],
        f"Provider cost of one finished job (MontageJobCostRising at {JOB_COST_RISE}x last week's mean).",
    ),
    _panel(
        "Stage throughput",
        "ops",
        [(f"sum by (stage) (rate(montage_stage_duration_seconds_count{{{NS}}}[5m]))", "{{stage}}")],
        "Stage runs per second (every attempt), by stage.",
    ),
    _panel(
        "Stage latency p95 (worker run time)",
        "s",
        _quantiles("montage_stage_duration_seconds", "stage", "15m"),
    ),
    _panel(
        "Stage latency p95 (dispatch to result)",
        "s",
        _quantiles("montage_stage_roundtrip_seconds", "stage", "15m")[:1],
        "As the orchestrator sees it: queueing plus the run.",
    ),
    _panel(
        "Queue depth (work waiting) and workers",
        "short",
        [
            (f"max by (stage) (montage_stage_backlog{{{NS}}})", "{{stage}} waiting"),
            (f"max by (stage) (montage_stage_workers{{{NS}}})", "{{stage}} workers"),
        ],
        "Undelivered plus delivered-unacked entries of each stage's group, and live workers (orchestrator).",
    ),
    _panel(
        "Stream lag and pending (from the consumers)",
        "short",
        [
            (f"max by (group) (montage_stream_pending{{{NS}}})", "{{group}} pending"),
            (f"max by (group) (montage_stream_lag_seconds{{{NS}}})", "{{group}} lag (s)"),
        ],
    ),
    _panel("Active jobs", "short", [(f"max(montage_active_jobs{{{NS}}})", "queued or processing")]),
    _panel(
        "Provider cost per hour",
        "currencyUSD",
        [
            (f"sum(rate(montage_job_cost_dollars_total{{{NS}}}[1h])) * 3600", "total $/h"),
            (f"sum by (stage) (rate(montage_job_cost_dollars_total{{{NS}}}[1h])) * 3600", "{{stage}} $/h"),
        ],
    ),
    _panel(
        "Dependencies (Redis, Postgres)",
        "s",
        [
            (f"max by (job, dependency) (montage_dependency_ping_seconds{{{NS}}})", "{{job}} → {{dependency}} ping"),
            (
                f"count by (dependency) (montage_dependency_up{{{NS}}} == 0)",
                "{{dependency}}: pods without an answer",
            ),
        ],
        "Each service's background ping of Redis and Postgres (slowest pod), and how many pods get no answer.",
    ),
    _panel(
        "SSE connections",
        "short",
        [
            (f"sum(montage_gateway_sse_connections{{{NS}}})", "total"),
            (f"sum by (instance) (montage_gateway_sse_connections{{{NS}}})", "{{instance}}"),
        ],
    ),
    _panel(
        "HTTP requests and 5xx ratio",
        "reqps",
        [
            (f"sum by (job) (rate(montage_http_requests_total{{{NS}}}[5m]))", "{{job}}"),
            (
                f'sum by (job) (rate(montage_http_requests_total{{{NS}, status=~"5.."}}[5m])) '
                f"/ clamp_min(sum by (job) (rate(montage_http_requests_total{{{NS}}}[5m])), 1e-9)",
                "{{job}} 5xx ratio",
            ),
        ],
    ),
    _panel(
        "HTTP latency p95 (SSE excluded)",
        "s",
        _quantiles("montage_http_request_duration_seconds", "job", "5m", 'route!~".*/stream"')[:1],
    ),
    _panel(
        "Dead letters",
        "short",
        [(f"sum by (group) (increase(montage_stream_dead_lettered_total{{{NS}}}[1h]))", "{{group}} / h")],
    ),
]


def _variables() -> list[dict[str, Any]]:
    """Datasource first (the namespace query runs against it), then the namespace."""
    return [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        },
        {
            "name": "namespace",
            "label": "Namespace",
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            # Namespaces where the orchestrator (one per Montage deployment) is scraped.
            "query": {"query": f"label_values(up{{{_jobs('orchestrator')}}}, namespace)", "refId": "namespace"},
            "definition": f"label_values(up{{{_jobs('orchestrator')}}}, namespace)",
            "refresh": 2,
            "sort": 1,
            "current": {},
            "hide": 0,
            "multi": False,
            "includeAll": False,
        },
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
        "templating": {"list": _variables()},
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
    board = json.dumps(dashboard(), indent=2) + "\n"
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "montage-grafana-dashboard",
            "labels": {"app.kubernetes.io/part-of": "montage", DASHBOARD_LABEL[0]: DASHBOARD_LABEL[1]},
        },
        "data": {"montage.json": board},
    }
    return {
        RULES_FILE: plain,
        OPERATOR_FILE: HEADER + _dump(operator),
        DASHBOARD_FILE: board,
        DASHBOARD_CONFIGMAP_FILE: HEADER
        + '# kube-prometheus-stack\'s Grafana sidecar imports ConfigMaps labelled grafana_dashboard: "1"\n'
        + "# (from any namespace with sidecar.dashboards.searchNamespace: ALL, else Grafana's own).\n"
        + _dump(configmap),
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
