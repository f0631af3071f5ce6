"""Prices, and the calls a job is planned to make: the one home of both.

The stage workers price every call from these rules (what a call reserves before it is made, what it
costs once its usage is known) and the orchestrator's pre-flight estimate is the same prices times
the calls planned for the song's length, so the estimate follows the configured providers and
their prices (``LLM_PRICES``, ``STT_PRICES``, ``IMAGE_PRICES``, ``RAGNAROK_USD_PER_SECOND``,
``LOCAL_COMPUTE_RATE_USD_PER_SECOND``): the local path estimates its compute, the provider path its
prices. Both services build a :class:`PriceCard` from their settings
(``montage_common.settings.PricingSettings``, which both inherit).

The plan of a song of ``D`` seconds (:func:`plan`):

- clips: the scene planner cuts the song into clips of ``CLIP_MIN_SECONDS``–``CLIP_MAX_SECONDS``
  (on beats, shorter when the music is loud) and never fewer than ``MIN_CLIPS``: planned
  ``max(MIN_CLIPS, ceil(D / mean))`` with ``mean`` the middle of the range (the planner's clips
  average 4.5–6.5 s with the defaults, by tempo: the count is within a quarter of the planner's,
  ``tests/stages/test_planned_cost.py``);
- stills: one per scene (one scene per kind of section, at most five; about one per 15 s of song)
  and one for the lead character;
- calls: one transcription of the song, two chat completions (the plan, the prompts) whose tokens
  grow with the clips, one image per still, one RAGNAROK render or one Runway task per clip (each at least 5 s);
- local compute: each stage's measured seconds on a 2-core machine (:data:`COMPUTE`), scaled by
  the frame size where it draws or encodes.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal
from typing import Literal

import msgspec

from montage_contracts.pipeline import MIN_CLIPS, STAGES

QUANTUM = Decimal("0.000001")  # costs are recorded to the micro-dollar
RAGNAROK_MIN_SECONDS, RAGNAROK_MAX_SECONDS = 5, 120  # what RAGNAROK renders per clip
RUNWAY_SHORT_SECONDS, RUNWAY_LONG_SECONDS = 5, 10  # the durations a Runway gen4_turbo task is asked for

# A chat completion's usage is known only after it. What it reserves before: a token per
# LLM_CHARS_PER_TOKEN characters sent (English runs about 4, JSON about 3: the high side) and an
# answer as long as the question (the planner and the prompt writer rewrite what they are given).
LLM_CHARS_PER_TOKEN = 3
LLM_ANSWER_TOKENS_PER_PROMPT_TOKEN = 1.0

# Planned tokens of the two chat completions: (prompt base, prompt per clip, answer base, answer per
# clip), measured on the planner's and the prompt writer's requests (4 characters per token).
LLM_PLAN: dict[str, tuple[int, int, int, int]] = {
    "scene_planner": (450, 90, 250, 75),
    "prompt_generator": (250, 110, 30, 105),
}
SCENE_SECONDS = 15.0  # about one scene (kind of section) per this much song
MAX_SCENES = 5  # intro, verse, chorus, bridge, outro
CHARACTERS = 1


class Compute(msgspec.Struct, frozen=True):
    """Local compute of a stage besides what it draws and encodes: ``base + per_song_second * D``
    seconds (the stills and the clips' encodes are priced by their size, below)."""

    base: float = 0.0
    per_song_second: float = 0.0


# Measured with the local pipeline (14 s and 30 s songs, 640x360 at 24 fps and 160x90 at 12 fps).
COMPUTE: dict[str, Compute] = {
    "audio_parser": Compute(0.3, 0.02),
    "scene_planner": Compute(),
    "reference_generator": Compute(),
    "prompt_generator": Compute(),
    "video_generator": Compute(),
    "composer": Compute(0.05, 0.003),
}
STILL_SECONDS_PER_MEGAPIXEL = 0.5  # a drawn still (2x the frame's width and height)
ENCODE_SECONDS_PER_CLIP_SECOND = 0.04  # ffmpeg's start and the muxing, per second of clip
ENCODE_SECONDS_PER_MEGAPIXEL_FRAME = 0.17  # per second of clip, per megapixel x frames per second


class PriceCard(msgspec.Struct, frozen=True, kw_only=True):
    """The configured providers and their prices: what every cost is computed from."""

    llm_model: str = ""  # empty: the local planner and prompts
    llm_prices: dict[str, tuple[float, ...]] = {}  # model -> (USD per 1M input, per 1M output tokens)
    stt_model: str = ""  # empty: no lyrics
    stt_prices: dict[str, tuple[float, ...]] = {}  # model -> (USD per minute,)
    image_model: str = ""  # empty: local stills
    image_prices: dict[str, tuple[float, ...]] = {}  # model -> (USD per image,)
    video_provider: Literal["local", "ragnarok", "runway"] = "local"
    ragnarok_usd_per_second: float = 0.05
    runway_usd_per_second: float = 0.05  # gen4_turbo: 5 credits a second at $0.01 a credit
    local_compute_rate: float = 0.002  # USD per compute second
    clip_min_seconds: float = 3.0
    clip_max_seconds: float = 8.0
    width: int = 640
    height: int = 360
    fps: int = 24


def usd(amount: float) -> Decimal:
    """Dollars, to the micro-dollar."""
    return Decimal(str(amount)).quantize(QUANTUM)


def price_table(spec: str, parts: int = 1) -> dict[str, tuple[float, ...]]:
    """``"model=a/b,other=c/d"`` -> ``{"model": (a, b), …}``; each entry must have ``parts`` numbers."""
    table: dict[str, tuple[float, ...]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        model, sep, numbers = entry.rpartition("=")
        try:
            values = tuple(float(v) for v in numbers.split("/"))
        except ValueError:
            values = ()
        if not sep or not model.strip() or len(values) != parts or any(v < 0 for v in values):
            raise ValueError(f"bad price entry {entry!r} (expected model={'/'.join(['usd'] * parts)})")
        table[model.strip()] = values
    return table


def _price(table: dict[str, tuple[float, ...]], model: str, parts: int) -> tuple[float, ...]:
    """The model's prices; a model missing from its table costs 0 (a self-hosted one)."""
    return table.get(model) or (0.0,) * parts


# --- the price of one call ------------------------------------------------------------------
def llm_usd(card: PriceCard, prompt_tokens: int, completion_tokens: int) -> Decimal:
    per_in, per_out = _price(card.llm_prices, card.llm_model, 2)
    return usd((prompt_tokens * per_in + completion_tokens * per_out) / 1_000_000)


def llm_reserve_usd(card: PriceCard, prompt_chars: int) -> Decimal:
    """What a chat completion of ``prompt_chars`` characters reserves (see the constants)."""
    tokens = -(-prompt_chars // LLM_CHARS_PER_TOKEN)
    return llm_usd(card, tokens, round(tokens * LLM_ANSWER_TOKENS_PER_PROMPT_TOKEN))


def stt_usd(card: PriceCard, seconds: float) -> Decimal:
    return usd(seconds / 60 * _price(card.stt_prices, card.stt_model, 1)[0])


def image_usd(card: PriceCard, images: int) -> Decimal:
    return usd(images * _price(card.image_prices, card.image_model, 1)[0])


def ragnarok_requested_seconds(clip_seconds: float) -> int:
    """What a RAGNAROK render of a clip asks for: its length rounded up, within RAGNAROK's 5–120 s."""
    return min(RAGNAROK_MAX_SECONDS, max(RAGNAROK_MIN_SECONDS, math.ceil(clip_seconds)))


def ragnarok_usd(card: PriceCard, requested_seconds: float) -> Decimal:
    return usd(requested_seconds * card.ragnarok_usd_per_second)


def runway_requested_seconds(clip_seconds: float) -> int:
    """What a Runway image-to-video task of a clip asks for: 5 s, or 10 s for a clip longer than 5 s
    (gen4_turbo's durations; a clip longer than 10 s loops its render)."""
    return RUNWAY_SHORT_SECONDS if clip_seconds <= RUNWAY_SHORT_SECONDS else RUNWAY_LONG_SECONDS


def runway_usd(card: PriceCard, requested_seconds: float) -> Decimal:
    """What a Runway task of ``requested_seconds`` reserves (its list price)."""
    return usd(requested_seconds * card.runway_usd_per_second)


def compute_usd(card: PriceCard, seconds: float) -> Decimal:
    """Local work, by compute seconds."""
    return usd(seconds * card.local_compute_rate)


def encode_seconds(card: PriceCard, clip_seconds: float) -> float:
    """The compute seconds of encoding ``clip_seconds`` of clip at the card's frame size and rate."""
    megapixel_frames = card.width * card.height * card.fps / 1_000_000
    return clip_seconds * (ENCODE_SECONDS_PER_CLIP_SECOND + ENCODE_SECONDS_PER_MEGAPIXEL_FRAME * megapixel_frames)


def clip_encode_usd(card: PriceCard, clip_seconds: float) -> Decimal:
    """What a clip's encode reserves."""
    return compute_usd(card, encode_seconds(card, clip_seconds))


# --- the plan of a song -------------------------------------------------------------------
def planned_clips(duration: float, min_len: float = 3.0, max_len: float = 8.0) -> int:
    """How many clips the scene planner cuts a song of ``duration`` seconds into (module docstring)."""
    mean = max((min_len + max_len) / 2, 0.5)
    return max(MIN_CLIPS, math.ceil(max(duration, 0.0) / mean))


def planned_stills(duration: float) -> int:
    scenes = min(MAX_SCENES, max(1, math.ceil(max(duration, 0.0) / SCENE_SECONDS)))
    return scenes + CHARACTERS


def plan(card: PriceCard, duration: float) -> dict[str, Decimal]:
    """What each stage is planned to spend on a song of ``duration`` seconds (the pre-flight estimate
    is their sum; the budget checks before reference_generator and video_generator use each)."""
    clips = planned_clips(duration, card.clip_min_seconds, card.clip_max_seconds)
    stills = planned_stills(duration)
    compute = {s: c.base + c.per_song_second * duration for s, c in COMPUTE.items()}
    still_mpx = 4 * card.width * card.height / 1_000_000
    if not card.image_model:
        compute["reference_generator"] += stills * STILL_SECONDS_PER_MEGAPIXEL * still_mpx
    compute["video_generator"] += encode_seconds(card, duration)
    cost = {s: compute_usd(card, compute[s]) for s in STAGES}

    if card.stt_model:
        cost["audio_parser"] += stt_usd(card, duration)
    if card.llm_model:
        for stage, (p0, p1, a0, a1) in LLM_PLAN.items():
            cost[stage] += llm_usd(card, p0 + p1 * clips, a0 + a1 * clips)
    if card.image_model:
        cost["reference_generator"] += image_usd(card, stills)
    if card.video_provider == "ragnarok":
        cost["video_generator"] += clips * ragnarok_usd(card, ragnarok_requested_seconds(duration / clips))
    elif card.video_provider == "runway":
        cost["video_generator"] += clips * runway_usd(card, runway_requested_seconds(duration / clips))
    return cost


def estimate(card: PriceCard, duration: float) -> Decimal:
    """The pre-flight estimate of a job: every planned call at the configured prices, to the cent
    (rounded up: an estimate is never below what its parts add up to)."""
    total = sum(plan(card, duration).values(), Decimal(0))
    return total.quantize(Decimal("0.01"), rounding=ROUND_CEILING)
