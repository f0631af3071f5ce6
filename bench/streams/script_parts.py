"""Where the hand-off script's Redis CPU goes: ``ack_emit.lua`` and variants of it with parts taken
out, each handing off the same batches, measured by ``INFO commandstats`` (``EVALSHA``'s usec:
the script with every command it calls).

    .venv/bin/python bench/streams/script_parts.py [--rounds 7] [--batches 500] [--batch 20]

Starts its own redis-server (no persistence, a free port on 127.0.0.1). Per round and variant:
``--batches`` x ``--batch`` entries written in the runtime's wire format, read by one consumer,
then handed off ``--batch`` at a time, one emit each to a second stream, as a worker does. Prints
the Redis CPU per entry (median over the rounds, each round in brackets). Variants (the first two
are the product's script; the others are for this measurement only):

- ``general``: the script's general form (per entry: entry id, emit count, key index, message id,
  payload), as for any batch before the compact form;
- ``compact``: its compact form (per entry: entry id, message id, payload), as
  ``batch_args`` sends a batch of one plain emit per entry to one stream;
- ``compact, no XADD``: the compact form with its ``XADD`` taken out (what the ``XADD`` costs
  when called from Lua is the difference);
- ``owner check only``: the batch's ``XPENDING`` and the ``XACK``, no loop;
- ``arguments only``: a script that returns at once, given the same arguments (the cost of
  turning them into Lua strings, and of the call).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import time
from typing import Any

from montage_streams import Emit
from montage_streams._scripts import batch_args, lua
from redis.asyncio import Redis

SOURCE, OUT = "{b}:s", "{b}:out"
COMPACT_XADD = "redis.call('XADD', dst, '*', 'id', ARGV[i+1], 'm', ARGV[i+2])"
OWNER_AND_ACK = """
local n = tonumber(ARGV[3])
local acks = {'XACK', KEYS[1], ARGV[1]}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[5], ARGV[6], 10 * n + 100, ARGV[2])) do
  acks[#acks+1] = p[1]
end
if #acks > 3 then redis.call(unpack(acks)) end
return 1
"""


def variants() -> dict[str, str]:
    script = lua("ack_emit")
    if COMPACT_XADD not in script:
        raise SystemExit("ack_emit.lua changed: update COMPACT_XADD")
    return {
        "general": script,
        "compact": script,
        "compact, no XADD": script.replace(COMPACT_XADD, "local _ = dst"),
        "owner check only": OWNER_AND_ACK,
        "arguments only": "return 1",
    }


def general_args(pairs: list[tuple[str, list[Emit]]]) -> tuple[list[str], list[Any]]:
    """The general form of the same batch (mode 0: no ids), as the script took every batch before."""
    argv: list[Any] = [len(pairs), 0, pairs[0][0], pairs[-1][0], 0]
    for entry_id, (e,) in pairs:
        argv += [entry_id, 1, 2, e.message_id, e.payload]
    return [SOURCE, OUT], argv


async def one(redis: Redis, name: str, source: str, batches: int, batch: int) -> float:
    await redis.flushall()
    await redis.xgroup_create(SOURCE, "g", id="0", mkstream=True)
    for start in range(0, batches * batch, 1000):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(start + 1000, batches * batch)):
            pipe.xadd(SOURCE, {"id": f"job-{n}", "m": str(n)})
        await pipe.execute()
    sha = await redis.script_load(source)
    await redis.config_resetstat()
    total = 0
    for _ in range(batches):
        resp: Any = await redis.xreadgroup("g", "c", {SOURCE: ">"}, count=batch)
        pairs = [(eid.decode(), [Emit(OUT, f[b"m"], f[b"id"].decode())]) for eid, f in resp[0][1]]
        keys, argv = general_args(pairs) if name == "general" else batch_args(SOURCE, pairs, ids=False)
        if name != "general" and argv[4] != 2:
            raise SystemExit("batch_args no longer sends this batch in the compact form")
        await redis.evalsha(sha, len(keys), *keys, "g", "c", *argv)
        total += len(pairs)
    info: Any = await redis.info("commandstats")
    if name in ("general", "compact") and await redis.xlen(OUT) != total:
        raise SystemExit(f"{name}: {await redis.xlen(OUT)} entries handed off, {total} expected")
    return int(info["cmdstat_evalsha"]["usec"]) / total


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batches", type=int, default=500)
    p.add_argument("--batch", type=int, default=20)
    args = p.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("needs redis-server on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        redis = Redis(port=port)
        for _ in range(100):  # bounded: 10 s
            try:
                await redis.ping()
                break
            except OSError:
                time.sleep(0.1)
        scripts = variants()
        results: dict[str, list[float]] = {name: [] for name in scripts}
        for _ in range(args.rounds):
            for name, source in scripts.items():  # interleaved, round by round
                results[name].append(await one(redis, name, source, args.batches, args.batch))
        print(f"Redis CPU per entry, batches of {args.batch}, medians of {args.rounds}:")
        for name, values in results.items():
            print(f"  {name:18s} {statistics.median(values):5.2f} µs  ({' / '.join(f'{v:.2f}' for v in values)})")
        ratios = [c / g for c, g in zip(results["compact"], results["general"], strict=True)]
        print(f"  compact / general per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}")  # fmt: skip
        await redis.aclose()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
