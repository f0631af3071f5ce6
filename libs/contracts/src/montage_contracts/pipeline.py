"""The pipeline as data: the six stages, in order, with every fact about each in one place.

Everything that used to compare stage names (progress marks, output types, expected durations,
budget checks, what a failure means, how a stage's input is built from the job and the
earlier stages' outputs) asks a :class:`StageSpec` instead. The orchestrator, the workers and the
one-process pipeline (``montage_stages.local_pipeline``) all iterate :data:`PIPELINE`. The job
statuses and the pipeline-wide rules (the clip minimum, the timeout message) live here too.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from montage_contracts.models import (
    AudioAnalysis,
    AudioParserInput,
    ClipPrompts,
    Clips,
    ComposerInput,
    PromptGeneratorInput,
    ReferenceGeneratorInput,
    ReferenceImages,
    ScenePlan,
    ScenePlannerInput,
    StageInput,
    VideoGeneratorInput,
    VideoOutput,
)

# What a stage's failure means for the job (after the runtime's retries):
# "fail" ends the job; "continue_text_only" records the stage as failed and carries on without
# its output; "fallback_plan" substitutes the orchestrator's simple plan for the stage's output.
FailurePolicy = Literal["fail", "continue_text_only", "fallback_plan"]

MIN_CLIPS = 3  # fewer rendered clips than this fails the job (spec); also the least the timing plans
TYPICAL_SONG_SECONDS = 180.0  # the song length each stage's ``expected_seconds`` is written for


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What a stage input needs from the job itself (not from earlier stages)."""

    audio_key: str
    user_prompt: str


# The outputs of the stages finished so far, by stage name; a stage that failed and was
# continued past (reference_generator, text-only) has none.
Outputs = Mapping[str, msgspec.Struct]
InputBuilder = Callable[[JobFacts, Outputs], StageInput]
_T = TypeVar("_T", bound=msgspec.Struct)


def _need(outputs: Outputs, stage: str, kind: type[_T]) -> _T:
    value = outputs.get(stage)
    if not isinstance(value, kind):
        raise LookupError(f"no output of {stage}")
    return value


def _audio_parser_input(job: JobFacts, outputs: Outputs) -> StageInput:
    return AudioParserInput(audio_key=job.audio_key)


def _scene_planner_input(job: JobFacts, outputs: Outputs) -> StageInput:
    return ScenePlannerInput(user_prompt=job.user_prompt, audio=_need(outputs, "audio_parser", AudioAnalysis))


def _reference_generator_input(job: JobFacts, outputs: Outputs) -> StageInput:
    return ReferenceGeneratorInput(plan=_need(outputs, "scene_planner", ScenePlan))


def _prompt_generator_input(job: JobFacts, outputs: Outputs) -> StageInput:
    refs = outputs.get("reference_generator")
    refs = refs if isinstance(refs, ReferenceImages) else None
    plan = _need(outputs, "scene_planner", ScenePlan)
    return PromptGeneratorInput(plan=plan, references=refs, fallback_mode=refs is None)


def _video_generator_input(job: JobFacts, outputs: Outputs) -> StageInput:
    return VideoGeneratorInput(
        clip_prompts=_need(outputs, "prompt_generator", ClipPrompts),
        transitions=_need(outputs, "scene_planner", ScenePlan).transitions,
    )


def _composer_input(job: JobFacts, outputs: Outputs) -> StageInput:
    audio = _need(outputs, "audio_parser", AudioAnalysis)
    return ComposerInput(
        clips=_need(outputs, "video_generator", Clips),
        audio_key=job.audio_key,
        transitions=_need(outputs, "scene_planner", ScenePlan).transitions,
        beats=audio.beat_timestamps,
        duration=audio.duration,
    )


@dataclass(frozen=True, slots=True)
class StageSpec:
    name: str
    output_type: type[msgspec.Struct]
    progress: int  # the spec's fixed progress mark once the stage has finished (percent)
    expected_seconds: int  # typical duration for a TYPICAL_SONG_SECONDS song (the prior of ``estimated_remaining``)
    budget_checked: (
        bool  # what is left of the cap must cover its planned cost (``pricing.plan``) before it is dispatched
    )
    on_failure: FailurePolicy
    build_input: InputBuilder  # the stage's input from the job and the earlier stages' outputs
    inputs_from: tuple[str, ...] = ()  # the earlier stages whose outputs ``build_input`` reads
    min_clips: int = 0  # an output with fewer clips than this is a failure (video_generator)
    started_message: str = ""  # the ``message`` event the stage starts with (every stage has one)

    @property
    def seconds_per_audio_second(self) -> float:
        """The prior rate of work per second of song, used until the orchestrator has measured one."""
        return self.expected_seconds / TYPICAL_SONG_SECONDS


PIPELINE: tuple[StageSpec, ...] = (
    StageSpec(
        "audio_parser",
        AudioAnalysis,
        10,
        15,
        False,
        "fail",
        _audio_parser_input,
        started_message="Analysing the song: tempo, beats, sections and mood",
    ),
    StageSpec(
        "scene_planner",
        ScenePlan,
        20,
        15,
        False,
        "fallback_plan",
        _scene_planner_input,
        inputs_from=("audio_parser",),
        started_message="Planning scenes that cut on the beat",
    ),
    StageSpec(
        "reference_generator",
        ReferenceImages,
        30,
        45,
        True,
        "continue_text_only",
        _reference_generator_input,
        inputs_from=("scene_planner",),
        started_message="Rendering a reference still for each scene",
    ),
    StageSpec(
        "prompt_generator",
        ClipPrompts,
        40,
        10,
        False,
        "fail",
        _prompt_generator_input,
        inputs_from=("scene_planner", "reference_generator"),
        started_message="Writing a prompt for each clip",
    ),
    StageSpec(
        "video_generator",
        Clips,
        85,
        240,
        True,
        "fail",
        _video_generator_input,
        inputs_from=("scene_planner", "prompt_generator"),
        min_clips=MIN_CLIPS,
        started_message="Rendering the clips",
    ),
    StageSpec(
        "composer",
        VideoOutput,
        100,
        45,
        False,
        "fail",
        _composer_input,
        inputs_from=("audio_parser", "scene_planner", "video_generator"),
        started_message="Composing the video with the song",
    ),
)

STAGES: tuple[str, ...] = tuple(s.name for s in PIPELINE)
STAGE_PROGRESS: dict[str, int] = {s.name: s.progress for s in PIPELINE}
_BY_NAME: dict[str, StageSpec] = {s.name: s for s in PIPELINE}


def spec(name: str) -> StageSpec:
    """The spec of stage ``name`` (``KeyError`` for an unknown stage)."""
    return _BY_NAME[name]


def next_stage(name: str) -> StageSpec | None:
    """The stage after ``name``, or ``None`` after the last one."""
    i = STAGES.index(name)
    return PIPELINE[i + 1] if i + 1 < len(PIPELINE) else None


def remaining_after(name: str | None, *, finished: bool) -> tuple[StageSpec, ...]:
    """The stages not yet finished when ``name`` is running (or has ``finished``)."""
    if name not in _BY_NAME:
        return PIPELINE
    i = STAGES.index(name) + (1 if finished else 0)
    return PIPELINE[i:]


class JobStatus(enum.StrEnum):
    """A job's status; ``cancelled`` is not one: a cancelled job is ``failed`` with code CANCELLED."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED})
JOB_STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset(JobStatus) - FINAL_STATUSES


class StageStatus(enum.StrEnum):
    """The status of one stage of a job (``job_stages.status``); ``pending``: not dispatched yet."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class StageUpdate(enum.StrEnum):
    """The ``status`` of a ``stage_update`` event: what just happened to the stage."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"


def timeout_message(seconds: float) -> str:
    """The error message of a job that ran past ``JOB_TIMEOUT_SECONDS``."""
    minutes = seconds / 60
    span = f"{minutes:g}-minute" if seconds % 60 == 0 else f"{seconds:g}-second"
    return f"Job exceeded {span} timeout"
