"""The context every stage receives: job identity, settings, storage, scratch space, callbacks.

A stage module exports ``async def process(ctx, job_id, input) -> output``. The worker builds one
:class:`StageContext` per task and wires the callbacks to its streams:

- ``progress(text)``: a human-readable ``message`` event ("Rendering clip 3 of 8"); also a good
  moment for the worker to extend its claim on the message.
- ``cost(item)``: one :class:`~montage_contracts.models.CostItem` per provider call or unit of local
  compute; ``call_id`` is stable under redelivery, so the orchestrator can dedupe. The worker also
  settles it in the job's budget ledger.
- ``budget``: the job's budget (:class:`~montage_common.budget.JobBudget`): every provider call and
  every clip reserves its price first (``async with ctx.budget.reserved(call_id, price):``); a
  reservation that would pass the job's cap raises ``BudgetExceededError`` and the call is not
  made. Unlimited by default (tests, the one-process pipeline).
- ``providers``: the worker's provider clients (one pool per process, see :mod:`provider_http`).
- ``preview(kind, index, key, subject)``: a stored still (``kind="still"``, ``subject`` scene or
  character) or clip (``"clip"``) is worth showing: the worker copies it to its preview key
  (``layout.preview``, kept with the video) and tells the orchestrator, which lists it and sends a
  ``preview`` event. Best effort, like ``progress``.
- ``check_cancelled()``: raises :class:`~montage_contracts.errors.JobCancelled` when the job was
  cancelled; stages call it between units of work.
- ``fanout``: video_generator's link to the clip workers (:mod:`clip_fanout`) when the worker
  fans a job's clips out over every video_generator process; ``None`` renders them in this process.

Tests build one with :meth:`StageContext.create` (callbacks default to no-ops).
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from montage_common.budget import JobBudget
from montage_common.storage import Storage
from montage_contracts.models import CostItem

from montage_stages.runtime.provider_http import Providers
from montage_stages.runtime.settings import StageSettings

if TYPE_CHECKING:
    from montage_stages.stages.clip_fanout import ClipFanout

ProgressFn = Callable[[str], Awaitable[None]]
CostFn = Callable[[CostItem], Awaitable[None]]
CancelCheckFn = Callable[[], Awaitable[None]]
PreviewFn = Callable[[str, int, str, "str | None"], Awaitable[None]]


async def _no_progress(text: str) -> None:
    return None


async def _no_cost(item: CostItem) -> None:
    return None


async def _never_cancelled() -> None:
    return None


async def _no_preview(kind: str, index: int, key: str, subject: str | None) -> None:
    return None


@dataclass(frozen=True, slots=True)
class StageContext:
    job_id: str
    settings: StageSettings
    storage: Storage
    workdir: Path  # scratch directory owned by this task; the worker removes it afterwards
    progress: ProgressFn = _no_progress
    cost: CostFn = _no_cost
    check_cancelled: CancelCheckFn = _never_cancelled
    user_id: str = ""  # the job's owner (a RAGNAROK clip job is recorded under this user)
    providers: Providers = field(default_factory=Providers)  # the worker's provider clients, shared
    fanout: ClipFanout | None = None  # video_generator: clips rendered by the clip workers
    budget: JobBudget = field(default_factory=JobBudget.unlimited)  # reservations against the job's cap
    preview: PreviewFn = _no_preview

    @classmethod
    def create(
        cls,
        job_id: str,
        storage: Storage,
        *,
        settings: StageSettings | None = None,
        workdir: Path | None = None,
        progress: ProgressFn | None = None,
        cost: CostFn | None = None,
        check_cancelled: CancelCheckFn | None = None,
        user_id: str = "",
        providers: Providers | None = None,
        fanout: ClipFanout | None = None,
        budget: JobBudget | None = None,
        preview: PreviewFn | None = None,
    ) -> StageContext:
        """A context with defaults: default settings, a fresh temp workdir, no-op callbacks."""
        wd = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix=f"montage-{job_id}-"))
        wd.mkdir(parents=True, exist_ok=True)
        return cls(
            job_id=job_id,
            settings=settings or StageSettings(),
            storage=storage,
            workdir=wd,
            progress=progress or _no_progress,
            cost=cost or _no_cost,
            check_cancelled=check_cancelled or _never_cancelled,
            user_id=user_id,
            providers=providers or Providers(),
            fanout=fanout,
            budget=budget or JobBudget.unlimited(job_id),
            preview=preview or _no_preview,
        )

    def scratch(self, name: str) -> Path:
        """A subdirectory of the workdir (created)."""
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path
