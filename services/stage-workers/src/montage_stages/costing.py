"""Pricing: local work by measured compute seconds (``local_compute_rate_usd_per_second``), provider
calls by their reported usage times the price tables of :class:`~montage_stages.settings.StageSettings`."""

from __future__ import annotations

import time
from decimal import Decimal
from types import TracebackType

import structlog
from montage_contracts.messages import call_id
from montage_contracts.models import CostItem

from montage_stages.context import StageContext
from montage_stages.settings import StageSettings, price_table

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


# --- provider prices (the tables in StageSettings: llm_prices, image_prices, stt_prices) ---
_warned: set[str] = set()


def _price(spec: str, model: str, parts: int) -> tuple[float, ...]:
    found = price_table(spec, parts).get(model)
    if found is None:
        if model not in _warned:
            _warned.add(model)
            structlog.get_logger().warning("provider_price_unknown", model=model, note="priced at 0")
        return (0.0,) * parts
    return found


def llm_usd(s: StageSettings, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """Tokens times the model's price per 1M input/output tokens."""
    per_in, per_out = _price(s.llm_prices, model, 2)
    return usd((prompt_tokens * per_in + completion_tokens * per_out) / 1_000_000)


def image_usd(s: StageSettings, model: str, images: int) -> Decimal:
    """Images times the model's price per image."""
    return usd(images * _price(s.image_prices, model, 1)[0])


def stt_usd(s: StageSettings, model: str, seconds: float) -> Decimal:
    """Minutes of audio times the model's price per minute."""
    return usd(seconds / 60 * _price(s.stt_prices, model, 1)[0])


# --- prices before the call (what a call reserves against the job's budget) ---------------------
# A chat completion's usage is known only after it; its reservation counts a token per
# LLM_CHARS_PER_TOKEN characters of what is sent (English runs about 4, JSON about 3: the high
# side), and an answer as long as the question (the planner and the prompt writer rewrite what
# they are given). The settlement replaces the guess with the reported usage.
LLM_CHARS_PER_TOKEN = 3
LLM_ANSWER_TOKENS_PER_PROMPT_TOKEN = 1.0
# Measured compute seconds per second of clip encoded (ffmpeg, one clip, the suite's and the
# default sizes on a 2-core machine): what a clip reserves before its encode.
ENCODE_SECONDS_PER_CLIP_SECOND = 1.0


def llm_reserve_usd(s: StageSettings, model: str, prompt_chars: int) -> Decimal:
    """What a chat completion of ``prompt_chars`` characters reserves."""
    tokens = -(-prompt_chars // LLM_CHARS_PER_TOKEN)
    return llm_usd(s, model, tokens, round(tokens * LLM_ANSWER_TOKENS_PER_PROMPT_TOKEN))


def clip_encode_usd(s: StageSettings, clip_seconds: float) -> Decimal:
    """What encoding a clip of ``clip_seconds`` reserves (local compute)."""
    return usd(clip_seconds * ENCODE_SECONDS_PER_CLIP_SECOND * s.local_compute_rate_usd_per_second)


def ragnarok_clip_usd(s: StageSettings, requested_seconds: float) -> Decimal:
    """What a RAGNAROK clip of ``requested_seconds`` reserves (the configured price per second)."""
    return usd(requested_seconds * s.ragnarok_usd_per_second)
