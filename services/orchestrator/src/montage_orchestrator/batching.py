"""Calls made by concurrent handlers in the same turn of the event loop, sent as one batch.

The results consumers run up to ``RESULTS_CONCURRENCY`` handlers at once per partition. Under a
backlog they move in step: their reads come back together, so their writes are issued together.
A :class:`Coalescer` turns those N calls into one round trip (one statement, one Redis pipeline):
the first call of a turn schedules a flush at the end of the turn (``call_soon``); every call
made before it runs joins the batch. A single call waits for nothing but that one turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``await c(item)``: ``run(items)`` once per turn for every item submitted in it (at most
    ``max_batch`` per run); ``run`` returns one result per item, in order. If it raises, and
    ``alone`` is given, each item of a batch of several runs by itself (``alone``), so one bad item
    fails only its own call; otherwise every call of the batch gets the exception."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_batch: int = 64,
        alone: Callable[[T], Awaitable[R]] | None = None,
    ) -> None:
        self._run = run
        self._alone = alone
        self.max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for i in range(0, len(queue), self.max_batch):
            task = asyncio.get_running_loop().create_task(self._batch(queue[i : i + self.max_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            if self._alone is None or len(batch) == 1:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            await asyncio.gather(*(self._one(item, fut) for item, fut in batch))
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def _one(self, item: T, fut: asyncio.Future[R]) -> None:
        assert self._alone is not None
        try:
            result = await self._alone(item)
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(result)
