"""The six stages, and the stage table the worker runs them from.

Each stage is one module named after it, exporting ``async def process(ctx, job_id, input) ->
output`` (its input and output are :mod:`montage_contracts.models` Structs; ``ctx`` is a
:class:`~montage_stages.runtime.context.StageContext`). :data:`PROCESS` names every stage's
``process`` explicitly, in :data:`~montage_contracts.pipeline.PIPELINE` order, so the stages are
imported where anyone (and any drawing of the imports) can see it; a test checks it against
``PIPELINE``. ``clip_fanout`` is video_generator's: one job's clips fanned out over every
video_generator worker.

The rooms of ``montage_stages``, from the top down (``tests/test_architecture.py`` checks that no
room imports one above it):

- the package itself: ``__main__`` and ``worker`` (one stage's worker process), ``local_pipeline``
  (all six stages in one process), ``faults`` (development-only fault injection);
- ``stages``: the six stages and video_generator's clip fan-out;
- ``providers``: the provider seams (text, images, transcription, clip renderers) and pricing;
- ``media``: local media and rendering (ffmpeg, MP4 boxes, clip encoding, pictures, audio analysis,
  the timeline, the sample-song synthesiser);
- ``runtime``: what every stage runs with: its context, settings, metrics and the process's
  provider clients.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from montage_stages.runtime.context import StageContext
from montage_stages.stages import (
    audio_parser,
    composer,
    prompt_generator,
    reference_generator,
    scene_planner,
    video_generator,
)

StageProcess = Callable[[StageContext, str, Any], Awaitable[msgspec.Struct]]

PROCESS: dict[str, StageProcess] = {
    "audio_parser": audio_parser.process,
    "scene_planner": scene_planner.process,
    "reference_generator": reference_generator.process,
    "prompt_generator": prompt_generator.process,
    "video_generator": video_generator.process,
    "composer": composer.process,
}
