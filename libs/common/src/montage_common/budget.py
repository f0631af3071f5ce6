"""Budget reservations: every provider call and every clip reserves its price against the job's cap
before it starts, and settles to what it really cost after.

One Redis hash per job (``keys.job_budget(job_id)``, in the job's partition's hash tag) is the
ledger; one Lua script (:data:`_LEDGER`) reads and changes it atomically, so concurrent reservers
(a job's clips on several workers, several worker or orchestrator replicas) can never hold more
than the cap between them. Amounts are integer micro-dollars (costs are quantized to $0.000001).

Fields: ``limit`` (the job's ``cost_limit``), ``spent`` (settled costs), ``reserved`` (the sum of
open reservations), ``r:<call_id>`` = ``"<amount> <holder>"`` (an open reservation),
``h:<holder>`` = the holder's lease expiry (Redis time, ms), ``s:<call_id>`` = a settled amount.

- **reserve** ``(call_id, amount)``: allowed only while ``spent + reserved + amount <= limit``;
  refused otherwise (the call is not made: :class:`BudgetExceededError`). The same ``call_id``
  again (a retried call, a redelivered task, a coordinator that took over a crashed one's clips)
  reserves nothing more: an open reservation changes holder, a settled call is reported settled.
- **settle** ``(call_id, amount)``: the reservation (if any) is released and the real amount
  added to ``spent``, once per ``call_id``. A real amount above the reservation is still added
  (it was spent); what follows is then refused, and the orchestrator, the system of record,
  refuses to record anything over the cap, so ``jobs.total_cost`` never passes it.
- **release** ``(call_id)``: a call that failed before it cost anything gives its reservation back.
- **Leases.** Each reservation belongs to a *holder* (one stage task's run in one process), whose
  lease the holder renews every ``JOB_HEARTBEAT_SECONDS``; the script drops the reservations of a
  holder whose lease ran out (a crashed worker), so they never block the job for longer than the
  lease. A finished task drops its holder's reservations at once.

**Seeding, and a Redis that lost the ledger.** The first reservation of a job creates the ledger
from the stage task: ``limit`` = the job's ``cost_limit``, ``spent`` = the total the orchestrator
had recorded when it dispatched the stage (the *floor*). Every later call raises ``spent`` to at
least that floor, so a settle that never reached Redis cannot lower what the ledger counts. When
the ledger is gone mid-stage (a Redis restart without persistence, a failover that lost writes),
the holder re-creates it on the safe side: the floor, plus everything this task settled, plus every
reservation it still holds counted as spent (their records are gone, so their later settlement is
counted again: the ledger may over-count, never under-count). Reservations of other holders that
were lost with it are, by construction, of tasks of the same stage that are no longer running
(one stage of a job runs at a time; a job's clips are all reserved by their coordinator).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import structlog
from montage_contracts.errors import BudgetExceededError, RetryableError
from montage_contracts.keys import Keys
from montage_contracts.models import CostItem
from montage_streams import REDIS_DOWN
from redis.asyncio import Redis

__all__ = [
    "LEDGER_TTL_SECONDS",
    "MICRO",
    "BudgetLedger",
    "JobBudget",
    "LedgerState",
    "Seed",
    "from_micro",
    "to_micro",
]

log = structlog.get_logger()

MICRO = Decimal("0.000001")
LEDGER_TTL_SECONDS = 2 * 24 * 3600  # refreshed on every change: outlives a job and its retries
BUDGET_EXCEEDED_MESSAGE = "Budget limit exceeded"

# KEYS[1]: the ledger. ARGV: op, ttl_s, limit, floor, seed_spent, then per op:
#   reserve  call amount holder lease_ms      -> {ok, status, spent, reserved, limit}
#   settle   call amount                      -> same
#   release  call                             -> same
#   renew    holder lease_ms                  -> same (ok 0: the lease had run out)
#   drop     holder                           -> same
# status: reserved | held | settled | refused | duplicate | released | renewed | expired | dropped | seeded
_LEDGER = """
local k = KEYS[1]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seeded = false
if op ~= 'release' and op ~= 'drop' and op ~= 'renew' then
  if redis.call('EXISTS', k) == 0 then
    redis.call('HSET', k, 'limit', ARGV[3], 'spent', ARGV[5], 'reserved', 0)
    seeded = true
  else
    local floor = tonumber(ARGV[4])
    if floor > tonumber(redis.call('HGET', k, 'spent') or '0') then
      redis.call('HSET', k, 'spent', floor)
    end
  end
end
local function state(ok, status)
  if redis.call('EXISTS', k) == 1 then redis.call('EXPIRE', k, ARGV[2]) end
  local v = redis.call('HMGET', k, 'spent', 'reserved', 'limit')
  if seeded then status = status .. '+seeded' end
  return {ok, status, tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')}
end
local function drop_reservation(f, value)
  local amount = tonumber(string.match(value, '^(%d+)'))
  redis.call('HDEL', k, f)
  redis.call('HINCRBY', k, 'reserved', -amount)
end
-- reservations of holders whose lease ran out (a crashed worker) are dropped first
local function expire()
  local all = redis.call('HGETALL', k)
  local alive = {}
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 2) == 'h:' then
      if tonumber(all[i + 1]) > now then alive[string.sub(f, 3)] = true else redis.call('HDEL', k, f) end
    end
  end
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 2) == 'r:' then
      local holder = string.match(all[i + 1], '^%d+ (.*)$')
      if not alive[holder] then drop_reservation(f, all[i + 1]) end
    end
  end
end

if op == 'reserve' then
  local call, amount, holder, lease = ARGV[6], tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
  expire()
  if redis.call('HEXISTS', k, 's:' .. call) == 1 then return state(1, 'settled') end
  local open = redis.call('HGET', k, 'r:' .. call)
  if open then
    redis.call('HSET', k, 'r:' .. call, string.match(open, '^(%d+)') .. ' ' .. holder, 'h:' .. holder, now + lease)
    return state(1, 'held')
  end
  local v = redis.call('HMGET', k, 'spent', 'reserved', 'limit')
  if tonumber(v[1]) + tonumber(v[2]) + amount > tonumber(v[3]) then return state(0, 'refused') end
  redis.call('HSET', k, 'r:' .. call, amount .. ' ' .. holder, 'h:' .. holder, now + lease)
  redis.call('HINCRBY', k, 'reserved', amount)
  return state(1, 'reserved')
elseif op == 'settle' then
  local call, amount = ARGV[6], ARGV[7]
  if redis.call('HEXISTS', k, 's:' .. call) == 1 then return state(1, 'duplicate') end
  local open = redis.call('HGET', k, 'r:' .. call)
  if open then drop_reservation('r:' .. call, open) end
  redis.call('HINCRBY', k, 'spent', amount)
  redis.call('HSET', k, 's:' .. call, amount)
  return state(1, 'settled')
elseif op == 'release' then
  local open = redis.call('HGET', k, 'r:' .. ARGV[6])
  if open then drop_reservation('r:' .. ARGV[6], open) end
  return state(1, 'released')
elseif op == 'renew' then
  local holder, lease = ARGV[6], tonumber(ARGV[7])
  if redis.call('HEXISTS', k, 'h:' .. holder) == 0 then return state(0, 'expired') end
  redis.call('HSET', k, 'h:' .. holder, now + lease)
  return state(1, 'renewed')
elseif op == 'drop' then
  local holder = ARGV[6]
  local all = redis.call('HGETALL', k)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'r:' and string.match(all[i + 1], '^%d+ (.*)$') == holder then
      drop_reservation(all[i], all[i + 1])
    end
  end
  redis.call('HDEL', k, 'h:' .. holder)
  return state(1, 'dropped')
end
return redis.error_reply('unknown ledger op ' .. op)
"""


def to_micro(amount: Decimal) -> int:
    """Dollars → integer micro-dollars (rounded up: a reservation never under-counts)."""
    return int((amount / MICRO).to_integral_value(rounding="ROUND_CEILING"))


def from_micro(micro: int) -> Decimal:
    return (Decimal(micro) * MICRO).quantize(MICRO)


@dataclass(frozen=True, slots=True)
class LedgerState:
    ok: bool
    status: str
    spent: Decimal
    reserved: Decimal
    limit: Decimal

    @property
    def seeded(self) -> bool:
        """The call (re-)created the ledger: it was missing."""
        return self.status.endswith("+seeded")


@dataclass(frozen=True, slots=True)
class Seed:
    """What a stage task knows of its job's budget: the cap and the total recorded at dispatch."""

    limit: Decimal
    floor: Decimal = Decimal(0)

    @classmethod
    def of_task(cls, cost_limit: str, budget_remaining: str) -> Seed:
        """From a ``StageTask``: ``cost_limit`` (empty from an orchestrator that predates it: the
        remaining budget is then the whole cap) and ``budget_remaining`` = cap − recorded total."""
        remaining = Decimal(budget_remaining or "0")
        if not cost_limit:
            return cls(limit=remaining)
        limit = Decimal(cost_limit)
        return cls(limit=limit, floor=max(limit - remaining, Decimal(0)))


class BudgetLedger:
    """The ledger script, registered once per process."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._script: Any = redis.register_script(_LEDGER)

    async def run(self, job_id: str, op: str, seed: Seed, seed_spent: Decimal, *args: object) -> LedgerState:
        reply = await self._script(
            keys=[self.keys.job_budget(job_id)],
            args=[
                op,
                LEDGER_TTL_SECONDS,
                to_micro(seed.limit),
                to_micro(seed.floor),
                to_micro(seed_spent),
                *(str(a) for a in args),
            ],
        )
        ok, status, spent, reserved, limit = reply
        return LedgerState(
            ok=bool(ok),
            status=status.decode() if isinstance(status, bytes) else str(status),
            spent=from_micro(int(spent)),
            reserved=from_micro(int(reserved)),
            limit=from_micro(int(limit)),
        )

    async def read(self, job_id: str) -> dict[str, str]:
        """The ledger's fields as they are (operators, tests)."""
        raw: dict[Any, Any] = await self.redis.hgetall(self.keys.job_budget(job_id))
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }


@dataclass
class JobBudget:
    """One stage task's reservations against its job's ledger (see the module docstring).

    ``ledger`` ``None`` is the unlimited budget of tests and the one-process pipeline: every
    reservation is granted and nothing is recorded.
    """

    ledger: BudgetLedger | None
    job_id: str
    holder: str
    seed: Seed
    lease_seconds: float = 10.0
    held: dict[str, Decimal] = field(default_factory=dict)  # call id → amount reserved by this task
    settled: dict[str, Decimal] = field(default_factory=dict)  # call id → amount this task settled
    unsent: dict[str, Decimal] = field(default_factory=dict)  # settlements Redis did not take yet
    has_lease: bool = False  # this holder has a lease in the ledger (dropped by :meth:`close`)
    # Awaited before every reservation, so before every provider call and clip: the worker's
    # cancel check (a cancelled job makes no provider call once the cancel is answered).
    before_call: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def unlimited(cls, job_id: str = "") -> JobBudget:
        return cls(ledger=None, job_id=job_id, holder="", seed=Seed(limit=Decimal(0)))

    def _seed_spent(self, *, without: str = "") -> Decimal:
        """What the ledger must start from if it is gone: the safe side (module docstring)."""
        held = sum((a for c, a in self.held.items() if c != without), Decimal(0))
        return self.seed.floor + sum(self.settled.values(), Decimal(0)) + held

    def _noted(self, state: LedgerState, op: str, call_id: str) -> None:
        if state.seeded:
            log.warning("budget_ledger_seeded", job_id=self.job_id, op=op, call=call_id, spent=str(state.spent))

    async def reserve(self, call_id: str, amount: Decimal) -> None:
        """Reserve ``amount`` for ``call_id``; :class:`BudgetExceededError` when it would pass the cap.
        Redis unreachable: :class:`RetryableError` (no call is made without a reservation).
        Whatever ``before_call`` raises (the job was cancelled) is raised first."""
        if self.before_call is not None:
            await self.before_call()
        if self.ledger is None:
            return
        try:
            await self._flush()
            state = await self.ledger.run(
                self.job_id, "reserve", self.seed, self._seed_spent(), call_id, to_micro(amount), self.holder,
                int(self.lease_seconds * 1000),
            )  # fmt: skip
        except REDIS_DOWN as exc:
            raise RetryableError(f"budget ledger unreachable: {type(exc).__name__}") from None
        self._noted(state, "reserve", call_id)
        if not state.ok:
            log.warning(
                "budget_reservation_refused", job_id=self.job_id, call=call_id, amount=str(amount),
                spent=str(state.spent), reserved=str(state.reserved), limit=str(state.limit),
            )  # fmt: skip
            raise BudgetExceededError(BUDGET_EXCEEDED_MESSAGE, job_id=self.job_id)
        if state.status.startswith(("reserved", "held")):
            self.held[call_id] = amount
            self.has_lease = True

    async def settle(self, item: CostItem) -> None:
        """Record what ``item``'s call really cost (its reservation released). Best effort: when
        Redis does not take it, it is sent again before the next reservation."""
        if self.ledger is None or item.call_id in self.settled:
            return
        self.settled[item.call_id] = item.amount
        self.unsent[item.call_id] = item.amount
        with contextlib.suppress(*REDIS_DOWN):
            await self._flush()

    async def _flush(self) -> None:
        assert self.ledger is not None
        for call_id, amount in list(self.unsent.items()):
            seed_spent = self._seed_spent(without=call_id) - amount  # its amount is added by the settle
            state = await self.ledger.run(
                self.job_id, "settle", self.seed, max(seed_spent, self.seed.floor), call_id, to_micro(amount)
            )
            self._noted(state, "settle", call_id)
            self.held.pop(call_id, None)
            self.unsent.pop(call_id, None)

    async def release(self, call_id: str) -> None:
        """Give back ``call_id``'s reservation (its call failed before costing anything)."""
        if self.ledger is None or call_id not in self.held or call_id in self.settled:
            return
        with contextlib.suppress(*REDIS_DOWN):
            await self.ledger.run(self.job_id, "release", self.seed, Decimal(0), call_id)
            self.held.pop(call_id, None)

    @contextlib.asynccontextmanager
    async def reserved(self, call_id: str, amount: Decimal) -> AsyncIterator[None]:
        """``async with budget.reserved(call, price):`` the call; released unless it was settled."""
        await self.reserve(call_id, amount)
        try:
            yield
        finally:
            if call_id not in self.settled:
                await asyncio.shield(self.release(call_id))

    async def renew(self) -> bool:
        """Extend this holder's lease; False when it had run out (its reservations were dropped)."""
        if self.ledger is None or not self.held:
            return True
        state = await self.ledger.run(
            self.job_id, "renew", self.seed, Decimal(0), self.holder, int(self.lease_seconds * 1000)
        )
        if not state.ok:
            log.warning("budget_lease_expired", job_id=self.job_id, holder=self.holder, held=len(self.held))
            self.held.clear()
        return state.ok

    async def close(self) -> None:
        """The task is over: send what is unsent, drop every reservation still held."""
        if self.ledger is None:
            return
        with contextlib.suppress(*REDIS_DOWN):
            if self.unsent:
                await self._flush()
            if self.held or self.has_lease:
                await self.ledger.run(self.job_id, "drop", self.seed, Decimal(0), self.holder)
                self.held.clear()
                self.has_lease = False

    @contextlib.asynccontextmanager
    async def leased(self, interval: float) -> AsyncIterator[JobBudget]:
        """Renew the lease every ``interval`` seconds while the block runs; :meth:`close` after.

        The loop ends by its own stop event, not by a cancel (redis-py may swallow a cancel that
        lands mid-command), and its end is awaited for a bounded time.
        """
        done = asyncio.Event()

        async def beat() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), interval)
                if not done.is_set():
                    with contextlib.suppress(*REDIS_DOWN):
                        await self.renew()

        renewing = asyncio.create_task(beat(), name=f"budget-lease-{self.job_id}")
        try:
            yield self
        finally:
            done.set()
            _, stuck = await asyncio.wait([renewing], timeout=5.0)
            for t in stuck:
                t.cancel()
            await asyncio.shield(self.close())
