"""Pricing local work: measured compute seconds times ``local_compute_rate_usd_per_second``."""

from __future__ import annotations

import time
from decimal import Decimal
from types import TracebackType

from montage_common.messages import call_id
from montage_common.models import CostItem

from montage_stages.context import StageContext

_QUANTUM = Decimal("0.000001")


def usd(amount: float) -> Decimal:
    return Decimal(str(amount)).quantize(_QUANTUM)


def local_cost(ctx: StageContext, call_id: str, api_name: str, seconds: float) -> CostItem:
    return CostItem(
        call_id=call_id,
        api_name=api_name,
        amount=usd(seconds * ctx.settings.local_compute_rate_usd_per_second),
    )


class ComputeMeter:
    """Measures wall seconds spent inside ``with meter:`` blocks; ``report()`` sends one CostItem.

    The call id ``{job_id}:{stage}:local`` is stable, so a redelivered task is not charged twice.
    """

    def __init__(self, ctx: StageContext, job_id: str, stage: str) -> None:
        self.ctx = ctx
        self.call_id = call_id(job_id, stage, "local")
        self.api_name = f"local:{stage}"
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> ComputeMeter:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.seconds += time.perf_counter() - self._start

    async def report(self) -> CostItem:
        item = local_cost(self.ctx, self.call_id, self.api_name, self.seconds)
        await self.ctx.cost(item)
        return item
