"""Cost estimates and the budget rules of the spec (money is always ``Decimal``).

Production/staging: ~$200 per job, $2000 cap. Development: ~$2-5 per job, $50 cap. The
pre-flight estimate grows a little with the song's length (more clips); the per-stage
estimates are what the budget check before ``reference_generator`` and ``video_generator``
compares with what is left of the cap.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from montage_contracts.pipeline import spec

from montage_orchestrator.settings import OrchestratorSettings

CENT = Decimal("0.01")

# (base, per minute of audio) for the whole job; each stage's share is in its StageSpec.
_JOB_ESTIMATE = {True: (Decimal("180"), Decimal("2")), False: (Decimal("2"), Decimal("0.30"))}


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def estimate_job(settings: OrchestratorSettings, duration_seconds: float) -> Decimal:
    """The pre-flight estimate of a job (production ~$200, development ~$2-5)."""
    base, per_minute = _JOB_ESTIMATE[settings.is_production]
    minutes = Decimal(str(round(max(duration_seconds, 0.0) / 60.0, 3)))
    return money(base + per_minute * minutes)


def estimate_stage(stage: str, job_estimate: Decimal) -> Decimal:
    """What ``stage`` is expected to spend: its share of the job's estimate."""
    return money(job_estimate * spec(stage).cost_share)


def within(total: Decimal, extra: Decimal, limit: Decimal) -> bool:
    """True when ``total + extra`` stays within ``limit``."""
    return total + extra <= limit
