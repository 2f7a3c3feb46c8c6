"""The async batcher that the predictor and the conversation store share (model/core/batching.py).

Deterministic on a loaded machine: a gate holds the first batch until the others have queued, and
"does not wait" is a wait of an hour that a correct batcher never starts, checked with a generous
timeout; no assertion bounds how long anything took.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from model.core.batching import AsyncBatcher

HOUR = 3600.0
GENEROUS = 60.0  # seconds; what a correct batcher needs is milliseconds


class HeldFirstBatch:
    """A batch function that records each batch and holds the first one until released."""

    def __init__(self, answer=lambda item: f"answer:{item}"):
        self.batches: list[list] = []
        self.release = threading.Event()
        self.answer = answer

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.release.wait(GENEROUS)
        return [self.answer(item) for item in items]

    async def running(self) -> None:
        """Until the first batch is running (on the batcher's thread)."""
        while not self.batches:
            await asyncio.sleep(0.001)


async def behind_a_held_batch(batcher: AsyncBatcher, held: HeldFirstBatch, items: list) -> tuple:
    """Submit "first", queue ``items`` while its batch runs, then let that batch finish: (first, queued) futures."""
    first = asyncio.ensure_future(batcher.submit("first"))
    await held.running()
    queued = [asyncio.ensure_future(batcher.submit(item)) for item in items]
    await asyncio.sleep(0)  # let them queue
    held.release.set()
    return first, queued


def run_with(batcher: AsyncBatcher, scenario):
    async def main():
        try:
            return await asyncio.wait_for(scenario(), GENEROUS)
        finally:
            batcher.close()

    return asyncio.run(main())


def test_what_queues_while_a_batch_runs_shares_the_next_batches_up_to_the_size():
    held = HeldFirstBatch()
    batcher = AsyncBatcher(held, max_batch_size=8)

    async def scenario():
        first, rest = await behind_a_held_batch(batcher, held, list(range(20)))
        return await first, await asyncio.gather(*rest)

    first, rest = run_with(batcher, scenario)
    assert first == "answer:first" and rest == [f"answer:{i}" for i in range(20)]  # each caller its own result
    assert held.batches == [["first"], list(range(8)), list(range(8, 16)), list(range(16, 20))]


def test_max_batch_size_counts_weight_and_a_heavy_item_still_runs_alone():
    held = HeldFirstBatch(answer=len)
    batcher = AsyncBatcher(held, max_batch_size=4, weight=len)

    async def scenario():
        first, rest = await behind_a_held_batch(batcher, held, ["bb", "cc", "d", "eeeeee", "f"])
        return await first, await asyncio.gather(*rest)

    first, rest = run_with(batcher, scenario)
    assert (first, rest) == (5, [2, 2, 1, 6, 1])
    assert held.batches == [["first"], ["bb", "cc"], ["d"], ["eeeeee"], ["f"]]


def test_a_lone_caller_does_not_wait_for_company():
    """A wait of an hour for company: a lone caller that waited at all would not finish in a minute."""
    batches = []
    batcher = AsyncBatcher(lambda items: batches.append(items) or items, max_batch_size=8, max_wait_s=HOUR)

    async def scenario():
        return [await batcher.submit(i) for i in range(3)]  # one caller at a time

    assert run_with(batcher, scenario) == [0, 1, 2]
    assert batches == [[0], [1], [2]]


def test_several_callers_wait_for_company_until_the_batch_is_full():
    held = HeldFirstBatch()
    batcher = AsyncBatcher(held, max_batch_size=4, max_wait_s=HOUR)

    async def scenario():
        first, three = await behind_a_held_batch(batcher, held, [0, 1, 2])
        await first
        for _ in range(50):  # however long this takes, three of four cannot start a batch within the hour
            await asyncio.sleep(0.001)
        assert held.batches == [["first"]] and not any(f.done() for f in three)
        fourth = await batcher.submit(3)  # fills the batch: it runs at once
        return await asyncio.gather(*three), fourth

    three, fourth = run_with(batcher, scenario)
    assert three == ["answer:0", "answer:1", "answer:2"] and fourth == "answer:3"
    assert held.batches == [["first"], [0, 1, 2, 3]]


def test_a_failed_batch_fails_every_caller_in_it_and_the_worker_carries_on():
    held = HeldFirstBatch()

    def fails_second_batch(items):
        answers = held(items)
        if len(held.batches) == 2:
            raise RuntimeError("model exploded")
        return answers

    batcher = AsyncBatcher(fails_second_batch, max_batch_size=8)

    async def scenario():
        first, three = await behind_a_held_batch(batcher, held, [0, 1, 2])
        failed = await asyncio.gather(*three, return_exceptions=True)
        return await first, failed, await batcher.submit("after")

    first, failed, after = run_with(batcher, scenario)
    assert held.batches == [["first"], [0, 1, 2], ["after"]]
    assert first == "answer:first" and after == "answer:after"
    assert all(isinstance(r, RuntimeError) and str(r) == "model exploded" for r in failed)


def test_retry_alone_fails_only_the_bad_item():
    held = HeldFirstBatch()

    def refuses_bad(items):
        held(items)
        if "bad" in items:
            raise ValueError("bad row")
        return [f"stored:{item}" for item in items]

    batcher = AsyncBatcher(refuses_bad, max_batch_size=8, retry_alone=True)

    async def scenario():
        first, rest = await behind_a_held_batch(batcher, held, ["a", "bad", "b"])
        return await first, await asyncio.gather(*rest, return_exceptions=True)

    first, (a, bad, b) = run_with(batcher, scenario)
    assert (first, a, b) == ("stored:first", "stored:a", "stored:b")
    assert isinstance(bad, ValueError)
    assert held.batches == [["first"], ["a", "bad", "b"], ["a"], ["bad"], ["b"]]  # the batch, then one by one


def test_a_batch_function_that_loses_results_fails_its_callers_instead_of_leaving_them_waiting():
    batcher = AsyncBatcher(lambda items: items[:-1], max_batch_size=8)

    async def scenario():
        with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
            await batcher.submit("x")

    run_with(batcher, scenario)


def test_runs_on_its_own_named_thread():
    batcher = AsyncBatcher(
        lambda items: [threading.current_thread().name for _ in items], max_batch_size=1, thread_name="flywheel-test"
    )

    async def scenario():
        return await batcher.submit("x")

    assert run_with(batcher, scenario).startswith("flywheel-test")
