"""Cost estimates and the budget rules of the spec (money is always ``Decimal``).

The pre-flight estimate is the configured prices times the calls planned for the song's length
(:mod:`montage_contracts.pricing`, the rules the stage workers price their calls with): the local
path estimates its compute, the provider path its prices. The same plan gives each stage's
estimate, which the budget checks before ``reference_generator`` and ``video_generator`` compare
with what is left of the cap. The caps: production/staging $2000, development $50
(``JOB_COST_LIMIT`` overrides).
"""

from __future__ import annotations

from decimal import Decimal

from montage_contracts import pricing

from montage_orchestrator.settings import OrchestratorSettings


def estimate_job(settings: OrchestratorSettings, duration_seconds: float) -> Decimal:
    """The pre-flight estimate of a job: every planned call at the configured prices."""
    return pricing.estimate(settings.price_card, duration_seconds)


def estimate_stage(settings: OrchestratorSettings, stage: str, duration_seconds: float) -> Decimal:
    """What ``stage`` is planned to spend on a song of ``duration_seconds``."""
    return pricing.plan(settings.price_card, duration_seconds)[stage]


def within(total: Decimal, extra: Decimal, limit: Decimal) -> bool:
    """True when ``total + extra`` stays within ``limit``."""
    return total + extra <= limit
