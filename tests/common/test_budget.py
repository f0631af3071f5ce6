"""The budget ledger (``montage_common.budget``) against a real Redis.

- concurrent reservers on separate connections never hold more than the cap, at any moment, and
  the cap binds (some reservations are refused);
- the same call id reserved again (a retry, a redelivered task, a new holder) reserves nothing more,
  and a settlement counts once;
- a crashed holder's reservations expire with its lease; a renewed lease keeps them;
- the ledger is seeded from the task (cap, recorded total), raised to the recorded total on every
  call, and re-created on the safe side when Redis lost it;
- Redis unreachable: no reservation, a retryable error (so no call is made unreserved).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from decimal import Decimal

import pytest
from montage_common.budget import BudgetLedger, JobBudget, Seed, from_micro
from montage_common.redis import create_redis
from montage_contracts.errors import BudgetExceededError, JobCancelled, RetryableError
from montage_contracts.keys import Keys
from montage_contracts.models import CostItem
from redis.asyncio import Redis

D = Decimal


def _budget(ledger: BudgetLedger, job: str, limit: str, floor: str = "0", *, lease: float = 10.0) -> JobBudget:
    return JobBudget(
        ledger, job, holder=f"h-{uuid.uuid4().hex[:6]}", seed=Seed(D(limit), D(floor)), lease_seconds=lease
    )


async def _state(redis: Redis, keys: Keys, job: str) -> tuple[Decimal, Decimal, Decimal]:
    spent, reserved, limit = await redis.hmget(keys.job_budget(job), ["spent", "reserved", "limit"])  # type: ignore[misc]
    return from_micro(int(spent or 0)), from_micro(int(reserved or 0)), from_micro(int(limit or 0))


async def test_concurrent_reservers_never_hold_more_than_the_cap(redis_url: str, keys: Keys) -> None:
    job = str(uuid.uuid4())
    limit = D("5.00")
    clients = [create_redis(redis_url) for _ in range(6)]  # six connections: six "workers"
    granted: list[Decimal] = []
    refused = 0
    peak = D(0)
    done = asyncio.Event()

    async def watch(r: Redis) -> None:
        nonlocal peak
        for _ in range(100_000):  # bounded; ends with the reservers
            if done.is_set():
                return
            spent, reserved, _ = await _state(r, keys, job)
            peak = max(peak, spent + reserved)

    async def worker(r: Redis, n: int) -> None:
        nonlocal refused
        budget = _budget(BudgetLedger(r, keys), job, str(limit))
        rng = random.Random(n)
        for i in range(40):
            call = f"{job}:video_generator:clip_{n}_{i}"
            price = D(rng.randint(10_000, 400_000)) / 1_000_000  # $0.01–$0.40
            try:
                async with budget.reserved(call, price):
                    granted.append(price)
                    await asyncio.sleep(rng.random() * 0.005)
                    if rng.random() < 0.7:  # most calls cost at most what they reserved; the rest fail (released)
                        actual = (price * D(rng.randint(50, 100)) / 100).quantize(D("0.000001"))
                        await budget.settle(CostItem(call_id=call, api_name="t", amount=actual))
            except BudgetExceededError:
                refused += 1

    try:
        watcher = asyncio.create_task(watch(clients[0]))
        await asyncio.wait_for(asyncio.gather(*(worker(r, n) for n, r in enumerate(clients[1:]))), 60)
        done.set()
        await watcher
        spent, reserved, cap = await _state(clients[0], keys, job)
    finally:
        for r in clients:
            await r.aclose()
    assert cap == limit
    assert reserved == 0  # every reservation was settled or released
    assert peak <= limit and spent <= limit
    assert refused > 0 and len(granted) > 10  # the cap bound: it was reached, and work was done under it


async def test_the_same_call_reserves_and_counts_once(redis: Redis, keys: Keys) -> None:
    job = str(uuid.uuid4())
    ledger = BudgetLedger(redis, keys)
    first, second = _budget(ledger, job, "1.00"), _budget(ledger, job, "1.00")
    call = f"{job}:scene_planner:llm"
    await first.reserve(call, D("0.40"))
    await first.reserve(call, D("0.40"))  # the same task retrying the call
    await second.reserve(call, D("0.40"))  # a redelivered task on another worker takes it over
    assert await _state(redis, keys, job) == (D(0), D("0.40"), D("1.00"))
    await second.settle(CostItem(call_id=call, api_name="t", amount=D("0.25")))
    await first.settle(CostItem(call_id=call, api_name="t", amount=D("0.25")))  # a duplicate report
    assert await _state(redis, keys, job) == (D("0.25"), D(0), D("1.00"))
    third = _budget(ledger, job, "1.00")
    await third.reserve(call, D("0.40"))  # settled already: nothing is reserved again
    assert await _state(redis, keys, job) == (D("0.25"), D(0), D("1.00"))
    await third.reserve(f"{job}:prompt_generator:llm", D("0.75"))  # exactly what is left
    with pytest.raises(BudgetExceededError):
        await third.reserve(f"{job}:video_generator:clip_0", D("0.000001"))
    await third.release(f"{job}:prompt_generator:llm")
    assert await _state(redis, keys, job) == (D("0.25"), D(0), D("1.00"))


async def test_a_crashed_holders_reservations_expire_and_a_live_one_keeps_them(redis: Redis, keys: Keys) -> None:
    job = str(uuid.uuid4())
    ledger = BudgetLedger(redis, keys)
    crashed = _budget(ledger, job, "1.00", lease=0.3)
    alive = _budget(ledger, job, "1.00", lease=0.3)
    await crashed.reserve(f"{job}:c:a", D("0.50"))  # then its process dies: nobody renews
    await alive.reserve(f"{job}:c:b", D("0.50"))
    other = _budget(ledger, job, "1.00")
    with pytest.raises(BudgetExceededError):
        await other.reserve(f"{job}:c:c", D("0.50"))
    deadline = time.monotonic() + 10
    granted = False
    while time.monotonic() < deadline and not granted:
        assert await alive.renew()
        try:
            await other.reserve(f"{job}:c:c", D("0.50"))
            granted = True
        except BudgetExceededError:
            await asyncio.sleep(0.05)
    assert granted  # the crashed holder's 0.50 came back
    assert await _state(redis, keys, job) == (D(0), D("1.00"), D("1.00"))  # the live holder's stayed
    await alive.close()
    assert await _state(redis, keys, job) == (D(0), D("0.50"), D("1.00"))
    # a holder whose every call settled leaves no lease behind either
    done = _budget(ledger, job, "1.00")
    await done.reserve(f"{job}:c:d", D("0.10"))
    await done.settle(CostItem(call_id=f"{job}:c:d", api_name="t", amount=D("0.10")))
    await done.close()
    assert f"h:{done.holder}" not in await ledger.read(job)


async def test_seeded_from_the_task_and_raised_to_the_recorded_total(redis: Redis, keys: Keys) -> None:
    job = str(uuid.uuid4())
    ledger = BudgetLedger(redis, keys)
    assert Seed.of_task("50", "49.25") == Seed(D("50"), D("0.75"))
    assert Seed.of_task("", "3") == Seed(D("3"), D(0))  # an orchestrator that sends no cap
    first = JobBudget(ledger, job, "h1", Seed.of_task("2.00", "1.50"))
    await first.reserve(f"{job}:a", D("0.10"))
    assert await _state(redis, keys, job) == (D("0.50"), D("0.10"), D("2.00"))
    # a later stage: the orchestrator has recorded 1.20 (a settlement Redis never saw included)
    later = JobBudget(ledger, job, "h2", Seed.of_task("2.00", "0.80"))
    with pytest.raises(BudgetExceededError):
        await later.reserve(f"{job}:b", D("0.71"))
    assert await _state(redis, keys, job) == (D("1.20"), D("0.10"), D("2.00"))


async def test_a_lost_ledger_is_recreated_on_the_safe_side(redis: Redis, keys: Keys) -> None:
    job = str(uuid.uuid4())
    ledger = BudgetLedger(redis, keys)
    budget = JobBudget(ledger, job, "h1", Seed(D("1.00"), D("0.20")))
    await budget.reserve(f"{job}:a", D("0.30"))
    await budget.settle(CostItem(call_id=f"{job}:a", api_name="t", amount=D("0.30")))
    await budget.reserve(f"{job}:b", D("0.25"))  # still in flight when Redis loses the ledger
    await redis.delete(keys.job_budget(job))
    # spent 0.20 before the stage + 0.30 settled + 0.25 in flight: only 0.25 is left
    with pytest.raises(BudgetExceededError):
        await budget.reserve(f"{job}:c", D("0.26"))
    spent, reserved, limit = await _state(redis, keys, job)
    assert (spent, reserved, limit) == (D("0.75"), D(0), D("1.00"))
    await budget.reserve(f"{job}:c", D("0.25"))


async def test_redis_unreachable_means_no_reservation(keys: Keys) -> None:
    dead = create_redis("redis://127.0.0.1:1/0")
    try:
        budget = _budget(BudgetLedger(dead, keys), str(uuid.uuid4()), "1.00")
        with pytest.raises(RetryableError, match="budget ledger unreachable"):
            await budget.reserve("x:y:z", D("0.10"))
    finally:
        await dead.aclose()


async def test_a_cancelled_job_reserves_nothing_so_makes_no_call(redis: Redis, namespace: str) -> None:
    """``before_call`` (the worker's cancel check) runs before every reservation: once it raises,
    no reservation is made, so no provider call or clip starts."""
    keys = Keys(namespace)
    job = f"job-{uuid.uuid4().hex[:8]}"
    cancelled = False

    async def check() -> None:
        if cancelled:
            raise JobCancelled("Job cancelled by user", job_id=job)

    budget = _budget(BudgetLedger(redis, keys), job, "1.00")
    budget.before_call = check
    await budget.reserve("call-1", Decimal("0.10"))
    cancelled = True
    with pytest.raises(JobCancelled):
        await budget.reserve("call-2", Decimal("0.10"))
    assert set(budget.held) == {"call-1"}
    assert (await _state(redis, keys, job))[1] == Decimal("0.10")  # only the first is reserved
