"""The pipeline's data: each stage's input and output (the spec's ``shared.models``).

All Structs are frozen and every field added later must have a default, so that
messages written by an older process still decode (msgspec schema evolution).
Storage objects are referred to by *storage keys* ``"<bucket>/<path>"``, never by URL;
a URL is made only at the edge (download, prompts sent to an external provider).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec


class Frozen(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    pass


# --- audio_parser -----------------------------------------------------------------
class Section(Frozen, frozen=True, kw_only=True):
    start: float
    end: float
    label: str  # "intro" | "verse" | "chorus" | "bridge" | "outro"
    energy: float = 0.0


class Mood(Frozen, frozen=True, kw_only=True):
    name: str  # e.g. "energetic", "calm", "melancholic", "uplifting"
    valence: float = 0.5  # 0 sad .. 1 happy
    arousal: float = 0.5  # 0 calm .. 1 intense


class LyricWord(Frozen, frozen=True, kw_only=True):
    start: float
    end: float
    word: str


class LyricLine(Frozen, frozen=True, kw_only=True):
    start: float
    end: float
    text: str
    words: list[LyricWord] = []  # word timestamps, when the transcription provider gives them


class AudioAnalysis(Frozen, frozen=True, kw_only=True):
    duration: float
    tempo: float  # BPM
    beat_timestamps: list[float]
    downbeats: list[float] = []
    sections: list[Section] = []
    energy: list[float] = []  # energy curve, 0..1, sampled at energy_rate Hz
    energy_rate: float = 10.0
    mood: Mood = Mood(name="neutral")
    lyrics: list[LyricLine] | None = None
    sample_rate: int = 22050


# --- scene_planner ------------------------------------------------------------------
class Character(Frozen, frozen=True, kw_only=True):
    id: str
    name: str
    description: str


class Scene(Frozen, frozen=True, kw_only=True):
    id: str
    description: str
    setting: str = ""
    palette: list[str] = []  # "#rrggbb"


class ClipScript(Frozen, frozen=True, kw_only=True):
    index: int
    start: float  # seconds in the song; boundaries fall on beats
    end: float
    scene_id: str
    description: str
    character_ids: list[str] = []
    motion: str = "zoom_in"  # zoom_in | zoom_out | pan_left | pan_right | pulse
    beats: list[float] = []  # beat times inside the clip, relative to its start


TransitionKind = Literal["cut", "fade", "dissolve", "wipeleft", "wiperight", "slideleft", "circleopen"]


class Transition(Frozen, frozen=True, kw_only=True):
    after_clip: int  # the transition between clip i and clip i+1
    kind: TransitionKind = "cut"
    duration: float = 0.0


class ScenePlan(Frozen, frozen=True, kw_only=True):
    style: str
    characters: list[Character]
    scenes: list[Scene]
    clip_scripts: list[ClipScript]
    transitions: list[Transition]
    planner: str = "local"  # which provider planned it
    fallback: bool = False  # True when the simple fallback plan was used


# --- reference_generator ------------------------------------------------------------
class ReferenceImage(Frozen, frozen=True, kw_only=True):
    id: str  # scene or character id
    kind: Literal["scene", "character"]
    key: str  # storage key "reference-images/{job_id}/..."
    width: int = 0
    height: int = 0


class ReferenceImages(Frozen, frozen=True, kw_only=True):
    scene_references: list[ReferenceImage]
    character_references: list[ReferenceImage] = []


# --- prompt_generator ---------------------------------------------------------------
class ClipPrompt(Frozen, frozen=True, kw_only=True):
    index: int
    prompt: str
    start: float
    end: float
    scene_id: str
    negative_prompt: str = ""
    reference_keys: list[str] = []  # empty in text-only (fallback) mode
    motion: str = "zoom_in"
    palette: list[str] = []
    beats: list[float] = []


class ClipPrompts(Frozen, frozen=True, kw_only=True):
    clips: list[ClipPrompt]
    text_only: bool = False


# --- video_generator ----------------------------------------------------------------
class Clip(Frozen, frozen=True, kw_only=True):
    index: int
    key: str  # storage key "video-clips/{job_id}/clip_{index}.mp4"
    start: float
    end: float
    duration: float
    provider: str = "local"
    provider_job_id: str = ""  # the provider's job (RAGNAROK: the Nexus job id at ragnarok-proxy)
    trace_id: str = ""  # the provider call's trace id (RAGNAROK: the Nexus trace id)


class ClipFailure(Frozen, frozen=True, kw_only=True):
    index: int
    error: str


class Clips(Frozen, frozen=True, kw_only=True):
    clips: list[Clip]
    failed: list[ClipFailure] = []


# --- composer -----------------------------------------------------------------------
class VideoOutput(Frozen, frozen=True, kw_only=True):
    key: str  # "video-outputs/{job_id}/final_video.mp4"
    duration: float
    width: int
    height: int
    size_bytes: int
    cuts: list[float] = []  # where the composer cut, seconds into the video
    poster_key: str | None = None  # a frame of the video, "video-outputs/{job_id}/poster.jpg" (None: not made)


# --- per-stage inputs ---------------------------------------------------------------
class AudioParserInput(Frozen, tag="audio_parser", frozen=True, kw_only=True):
    audio_key: str


class ScenePlannerInput(Frozen, tag="scene_planner", frozen=True, kw_only=True):
    user_prompt: str
    audio: AudioAnalysis


class ReferenceGeneratorInput(Frozen, tag="reference_generator", frozen=True, kw_only=True):
    plan: ScenePlan


class PromptGeneratorInput(Frozen, tag="prompt_generator", frozen=True, kw_only=True):
    plan: ScenePlan
    references: ReferenceImages | None = None  # None: text-only fallback mode
    fallback_mode: bool = False


class VideoGeneratorInput(Frozen, tag="video_generator", frozen=True, kw_only=True):
    clip_prompts: ClipPrompts
    transitions: list[Transition] = []  # the plan's transitions (rendered inside the clips that meet)


class ComposerInput(Frozen, tag="composer", frozen=True, kw_only=True):
    clips: Clips
    audio_key: str
    transitions: list[Transition]
    beats: list[float]
    duration: float


StageInput = (
    AudioParserInput
    | ScenePlannerInput
    | ReferenceGeneratorInput
    | PromptGeneratorInput
    | VideoGeneratorInput
    | ComposerInput
)


class CostItem(Frozen, frozen=True, kw_only=True):
    """One provider call's cost. ``call_id`` is stable under redelivery (idempotency key)."""

    call_id: str
    api_name: str
    amount: Decimal
