"""One async batcher: items from many coroutines, run in batches by a blocking function on one thread.

Callers ``await batcher.submit(item)``; a worker task on the event loop takes what is waiting (up to
``max_batch_size``, counted in ``weight(item)`` units; an item heavier than that runs alone), runs
``run_batch(items) -> results`` on a dedicated thread and hands each caller its own result, or the
exception. A caller is answered only once its batch is done, so a store writer acknowledges only
what was committed.

With ``max_wait_s`` the worker waits up to that long for company before a batch starts, except for
a lone caller (one item waiting, and the last batch held only one): company that is not coming
would only make it wait. Under concurrency items also pile up while the previous batch runs, so
batches fill without any wait. With ``retry_alone`` a failed batch of several items is run again one
item at a time, so one bad item fails only its own caller; given a predicate instead of True, only
when it says so for the batch's exception (a store that is down fails every item alike: no retry).

The predictor (``model.serve``: texts of concurrent requests in one forward pass) and the
conversation store (``model.collect``: concurrent events in one transaction, one fsync) use it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Waiting(Generic[Item]):
    item: Item
    weight: int
    future: asyncio.Future


class AsyncBatcher(Generic[Item, Result]):
    """Batches of submitted items through ``run_batch`` on one thread; each caller gets its own result."""

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        max_batch_size: int,
        max_wait_s: float = 0.0,
        weight: Callable[[Item], int] | None = None,
        retry_alone: bool | Callable[[Exception], bool] = False,
        thread_name: str = "flywheel-batch",
    ):
        self._run_batch = run_batch
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self._weight = weight or (lambda _item: 1)
        self.retry_alone = retry_alone
        self._pending: deque[_Waiting[Item]] = deque()
        self._pending_weight = 0
        self._last_batch_items = 0
        # made with the worker, on the running loop: the batcher is built before any loop runs
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)

    async def submit(self, item: Item) -> Result:
        """The result of ``item``, once the batch it joined has run (or that batch's exception)."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._run())
        waiting = _Waiting(item, self._weight(item), loop.create_future())
        self._pending.append(waiting)
        self._pending_weight += waiting.weight
        self._arrived.set()
        return await waiting.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_company(loop)
            batch = self._take()
            try:
                results = await self._run_in_thread(loop, batch)
            except Exception as exc:  # noqa: BLE001 - handed to the callers, the worker carries on
                if len(batch) > 1 and (self.retry_alone(exc) if callable(self.retry_alone) else self.retry_alone):
                    await self._run_each_alone(loop, batch)
                else:
                    _fail(batch, exc)
                continue
            for waiting, result in zip(batch, results):
                _answer(waiting, result)

    async def _wait_for_company(self, loop: asyncio.AbstractEventLoop) -> None:
        """Up to ``max_wait_s`` for the batch to fill, unless the caller is alone."""
        alone = len(self._pending) == 1 and self._last_batch_items <= 1
        deadline = loop.time() + (0.0 if alone else self.max_wait_s)
        while self._pending_weight < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Waiting[Item]]:
        """The oldest waiting items up to ``max_batch_size``; at least one, however heavy."""
        batch, weight = [], 0
        while self._pending and (not batch or weight + self._pending[0].weight <= self.max_batch_size):
            waiting = self._pending.popleft()
            batch.append(waiting)
            weight += waiting.weight
        self._pending_weight -= weight
        self._last_batch_items = len(batch)
        return batch

    async def _run_in_thread(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting[Item]]) -> Sequence[Result]:
        results = await loop.run_in_executor(self._executor, self._run_batch, [w.item for w in batch])
        if len(results) != len(batch):  # a caller without a result would wait forever
            raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} items")
        return results

    async def _run_each_alone(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting[Item]]) -> None:
        for waiting in batch:
            try:
                (result,) = await self._run_in_thread(loop, [waiting])
            except Exception as exc:  # noqa: BLE001 - this caller answers with its own error
                _fail([waiting], exc)
                continue
            _answer(waiting, result)

    def close(self, wait: bool = False) -> None:
        """Stop the worker; with ``wait``, also wait for a batch the thread is running (a commit in flight)."""
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=wait, cancel_futures=True)


# A caller that gave up (a timeout, a closed connection) has a cancelled future: nothing to answer.


def _answer(waiting: _Waiting, result) -> None:
    if not waiting.future.done():
        waiting.future.set_result(result)


def _fail(batch: list[_Waiting], exc: BaseException) -> None:
    for waiting in batch:
        if not waiting.future.done():
            waiting.future.set_exception(exc)
