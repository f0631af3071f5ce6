"""Pricing: local work by measured compute seconds (``local_compute_rate_usd_per_second``), provider
calls by their reported usage times the configured price tables; the rules themselves (and what a
call reserves before it is made) are :mod:`montage_contracts.pricing`'s, shared with the
orchestrator's estimate."""

from __future__ import annotations

import time
from decimal import Decimal
from types import TracebackType

import msgspec
import structlog
from montage_contracts import pricing
from montage_contracts.messages import call_id
from montage_contracts.models import CostItem
from montage_contracts.pricing import price_table

from montage_stages.runtime.context import StageContext
from montage_stages.runtime.settings import StageSettings

usd = pricing.usd


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


# --- provider prices: the rules of montage_contracts.pricing over the configured tables ---------
_warned: set[str] = set()


def _card(s: StageSettings, table: dict[str, tuple[float, ...]], model: str) -> pricing.PriceCard:
    """The settings' price card; a model missing from its table is priced 0 and logged once."""
    if model not in table and model not in _warned:
        _warned.add(model)
        structlog.get_logger().warning("provider_price_unknown", model=model, note="priced at 0")
    return s.price_card


def llm_usd(s: StageSettings, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """Tokens times the model's price per 1M input/output tokens."""
    card = _card(s, price_table(s.llm_prices, 2), model)
    return pricing.llm_usd(msgspec.structs.replace(card, llm_model=model), prompt_tokens, completion_tokens)


def llm_reserve_usd(s: StageSettings, model: str, prompt_chars: int) -> Decimal:
    """What a chat completion of ``prompt_chars`` characters reserves before it is made."""
    return pricing.llm_reserve_usd(msgspec.structs.replace(s.price_card, llm_model=model), prompt_chars)


def image_usd(s: StageSettings, model: str, images: int) -> Decimal:
    """Images times the model's price per image."""
    card = _card(s, price_table(s.image_prices, 1), model)
    return pricing.image_usd(msgspec.structs.replace(card, image_model=model), images)


def stt_usd(s: StageSettings, model: str, seconds: float) -> Decimal:
    """Minutes of audio times the model's price per minute."""
    card = _card(s, price_table(s.stt_prices, 1), model)
    return pricing.stt_usd(msgspec.structs.replace(card, stt_model=model), seconds)


def clip_encode_usd(s: StageSettings, clip_seconds: float) -> Decimal:
    """What encoding a clip of ``clip_seconds`` reserves (local compute at the frame size and rate)."""
    return pricing.clip_encode_usd(s.price_card, clip_seconds)


def ragnarok_clip_usd(s: StageSettings, requested_seconds: float) -> Decimal:
    """What a RAGNAROK clip of ``requested_seconds`` reserves (the configured price per second)."""
    return pricing.ragnarok_usd(s.price_card, requested_seconds)
