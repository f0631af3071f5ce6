"""Stage 2, scene_planner: characters, scenes, beat-aligned clip scripts and transitions.

``async def process(ctx, job_id, input: ScenePlannerInput) -> ScenePlan``

The local planner builds the plan from the prompt and the song: one scene per kind of section
(choruses share a scene), a palette per scene derived from the prompt's words and the mood, clip
boundaries on beats (downbeats preferred, a cut at every section change, lengths following the
energy), and transitions chosen from section changes and energy. The lyrics sung in a clip (word
timestamps from the transcription provider) go into its description. When ``settings.llm_url`` is
set the text provider rewrites the descriptive parts (style, characters, scenes, clip
descriptions, :mod:`llm_planner`); the timing always stays local. Its failures propagate: the
runtime retries the retryable ones, and after the last retry the orchestrator takes the spec's
fallback (a simple plan).
"""

from __future__ import annotations

import itertools

import structlog
from montage_contracts.models import (
    AudioAnalysis,
    Character,
    ClipScript,
    Scene,
    ScenePlan,
    ScenePlannerInput,
    Section,
    Transition,
    TransitionKind,
)

from montage_stages.media.clip_timing import clip_bounds, energy_at
from montage_stages.media.palette import palette, words
from montage_stages.providers import llm_planner
from montage_stages.providers.costing import ComputeMeter
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.metrics import track_stage

STAGE = "scene_planner"
log = structlog.get_logger()

_SETTINGS: dict[str, str] = {
    "intro": "an establishing wide shot, the world before the story starts",
    "verse": "close, intimate framing that follows the story",
    "chorus": "a big open space at full intensity",
    "bridge": "a dreamlike, altered version of the world",
    "outro": "a slow pull-back as the story settles",
}
_MOTIONS = ["zoom_in", "pan_right", "zoom_out", "pan_left"]
_GROUP_WORDS = {"band", "duo", "couple", "friends", "lovers", "two", "together", "crew"}


async def process(ctx: StageContext, job_id: str, input: ScenePlannerInput) -> ScenePlan:
    async with track_stage(STAGE):
        await ctx.check_cancelled()
        meter = ComputeMeter(ctx, job_id, STAGE)
        with meter:
            plan = local_plan(
                input.user_prompt, input.audio, ctx.settings.clip_min_seconds, ctx.settings.clip_max_seconds
            )
        await meter.report()
        if ctx.settings.llm_url:
            lyrics = {c.index: clip_lyrics(input.audio, c.start, c.end) for c in plan.clip_scripts}
            plan = await llm_planner.enrich(ctx, job_id, input.user_prompt, plan, lyrics)
        log.info("scene_plan_ready", job_id=job_id, clips=len(plan.clip_scripts), planner=plan.planner)
        return plan


def local_plan(prompt: str, audio: AudioAnalysis, min_len: float = 3.0, max_len: float = 8.0) -> ScenePlan:
    """The deterministic plan of ``prompt`` over ``audio``."""
    subject = prompt.strip() or "a journey through sound"
    sections = audio.sections or [Section(start=0.0, end=audio.duration, label="verse")]
    characters = [Character(id="char_1", name="The Lead", description=f"the central figure of {subject}")]
    if _GROUP_WORDS & set(words(prompt)):
        characters.append(Character(id="char_2", name="The Companion", description=f"the companion in {subject}"))

    scene_of_label: dict[str, Scene] = {}
    for sec in sections:
        if sec.label not in scene_of_label:
            n = len(scene_of_label) + 1
            scene_of_label[sec.label] = Scene(
                id=f"scene_{n}",
                description=f"{subject}, {sec.label}: {_SETTINGS.get(sec.label, 'the story continues')}",
                setting=_SETTINGS.get(sec.label, ""),
                palette=palette(prompt, audio.mood, salt=sec.label),
            )

    bounds = clip_bounds(audio, min_len, max_len)
    clips: list[ClipScript] = []
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        sec = _section_at(sections, (start + end) / 2)
        scene = scene_of_label[sec.label]
        energy = energy_at(audio, start)
        cast = [] if sec.label in ("intro", "outro") else [characters[i % len(characters)].id]
        sung = clip_lyrics(audio, start, end)
        clips.append(
            ClipScript(
                index=i,
                start=start,
                end=end,
                scene_id=scene.id,
                description=f"{scene.description}; shot {i + 1}, {_energy_word(energy)} energy"
                + (f'; lyrics: "{sung}"' if sung else ""),
                character_ids=cast,
                motion="pulse" if sec.label == "chorus" and i % 2 else _MOTIONS[i % len(_MOTIONS)],
                beats=[round(b - start, 4) for b in audio.beat_timestamps if start <= b < end],
            )
        )
    transitions = _transitions(clips, sections, audio)
    style = f"{audio.mood.name} cinematic music video, {round(audio.tempo)} BPM, about {subject}"
    return ScenePlan(
        style=style,
        characters=characters,
        scenes=list(scene_of_label.values()),
        clip_scripts=clips,
        transitions=transitions,
        planner="local",
    )


def clip_lyrics(audio: AudioAnalysis, start: float, end: float, limit: int = 200) -> str:
    """The words sung between ``start`` and ``end`` (a word belongs where it starts)."""
    words: list[str] = []
    for line in audio.lyrics or []:
        if line.words:
            words += [w.word.strip() for w in line.words if start <= w.start < end]
        elif start <= line.start < end:
            words.append(line.text.strip())
    return " ".join(w for w in words if w)[:limit]


def _transitions(clips: list[ClipScript], sections: list[Section], audio: AudioAnalysis) -> list[Transition]:
    beat = 60.0 / audio.tempo if audio.tempo > 0 else 0.5
    out: list[Transition] = []
    for a, b in itertools.pairwise(clips):
        sa, sb = _section_at(sections, a.start), _section_at(sections, b.start)
        room = 0.4 * min(a.end - a.start, b.end - b.start)
        kind: TransitionKind
        if sa is not sb:
            rising = sb.energy > sa.energy
            kind = ("wipeleft", "circleopen", "slideleft")[a.index % 3] if rising else ("fade", "dissolve")[a.index % 2]
            duration = min(beat, 1.0, room)
        elif energy_at(audio, b.start) < 0.35 and a.index % 2 == 0:
            kind, duration = "dissolve", min(beat / 2, 0.5, room)
        else:
            kind, duration = "cut", 0.0
        if duration < 0.1:
            kind, duration = "cut", 0.0
        out.append(Transition(after_clip=a.index, kind=kind, duration=round(duration, 3)))
    return out


def _section_at(sections: list[Section], t: float) -> Section:
    for sec in sections:
        if sec.start <= t < sec.end:
            return sec
    return sections[-1] if t >= sections[-1].start else sections[0]


def _energy_word(e: float) -> str:
    return "high" if e > 0.6 else "medium" if e > 0.3 else "low"
