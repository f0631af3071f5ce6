"""The Lua scripts of the stream runtime and the packing of their arguments.

Every check-then-act of :mod:`montage_streams` (owner check before an ack, a retry or
a renewal; the safe trim floor; consumer removal) runs inside one script, so no other client
can act between the check and the action. All keys one script touches share a hash tag.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from montage_streams._model import Emit

# Hand off a batch of entries, then fetch new ones for the slots this frees. For each entry,
# only while `consumer` owns it: XADD its emits (fields id, a=1, m, extras; optionally PUBLISH
# "<id> <payload>" and EXPIRE the stream) and XACK it. An entry id of '' means "no source
# entry" (the producer). Returns per entry the new ids, or false if the claim was lost; then
# up to `fetch` new entries (XREADGROUP >) or false. KEYS: [source, emit streams...].
# ARGV: group, consumer, n_entries, fetch, then per entry: entry id, n_emits, then per emit:
# "<key index> <maxlen> <ttl> <n_extra>", channel, message id, payload, extra pairs.
ACK_EMIT = """
local src, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local n, fetch = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local i = 5
for e = 1, n do
  local entry, nemits = ARGV[i], tonumber(ARGV[i+1])
  i = i + 2
  local owned = true
  if entry ~= '' then
    local p = redis.call('XPENDING', src, group, entry, entry, 1)
    owned = #p > 0 and p[1][2] == consumer
  end
  local ids = {}
  for _ = 1, nemits do
    local k, maxlen, ttl, nx = string.match(ARGV[i], '(%d+) (%d+) (%d+) (%d+)')
    local key, channel, payload = KEYS[tonumber(k)], ARGV[i+1], ARGV[i+3]
    maxlen, ttl, nx = tonumber(maxlen), tonumber(ttl), tonumber(nx)
    if owned then
      local id
      if maxlen == 0 and nx == 0 then  -- the common case: no argument table to build
        id = redis.call('XADD', key, '*', 'id', ARGV[i+2], 'a', '1', 'm', payload)
      else
        local args = {'XADD', key}
        if maxlen > 0 then args[3] = 'MAXLEN'; args[4] = '~'; args[5] = maxlen end
        args[#args+1] = '*'
        args[#args+1] = 'id'; args[#args+1] = ARGV[i+2]
        args[#args+1] = 'a'; args[#args+1] = '1'
        args[#args+1] = 'm'; args[#args+1] = payload
        for f = i + 4, i + 3 + 2 * nx do args[#args+1] = ARGV[f] end
        id = redis.call(unpack(args))
      end
      ids[#ids+1] = id
      if channel ~= '' then redis.call('PUBLISH', channel, id .. ' ' .. payload) end
      if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    end
    i = i + 4 + 2 * nx
  end
  if owned then
    if entry ~= '' then redis.call('XACK', src, group, entry) end
    out[e] = ids
  else
    out[e] = false
  end
end
if fetch > 0 then
  out[n+1] = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', fetch, 'STREAMS', src, '>')
end
return out
"""

# Move an owned entry to the delayed set (due at ARGV[4] ms) and ack it.
# KEYS: source, delayed zset. ARGV: group, entry, consumer, due_ms, member.
RETRY = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Move due delayed entries back to their streams. KEYS: delayed zset. ARGV: now_ms, limit.
# A member is netstrings "<len>:<bytes>" of [stream, field, value, ...] (binary safe); a
# member starting with '{' is the older JSON form {"s": stream, "f": [fields]}.
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local parts = {}
  if string.sub(member, 1, 1) == '{' then
    local d = cjson.decode(member)
    parts[1] = d.s
    for _, v in ipairs(d.f) do parts[#parts+1] = v end
  else
    local i = 1
    while i <= #member do
      local c = string.find(member, ':', i, true)
      local n = tonumber(string.sub(member, i, c - 1))
      parts[#parts+1] = string.sub(member, c + 1, c + n)
      i = c + n + 1
    end
  end
  local args = {'XADD', parts[1], '*'}
  for k = 2, #parts do args[#args+1] = parts[k] end
  redis.call(unpack(args))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""

# Reset the idle time of the entries this consumer still owns. KEYS: stream.
# ARGV: group, consumer, ids...
RENEW = """
local n = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
"""

# Ack this consumer's pending entries that no longer exist in the stream (deleted or trimmed
# while pending; Redis 6.2's XAUTOCLAIM claims them without telling their ids).
# KEYS: stream. ARGV: group, consumer, limit.
ACK_MISSING = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[2])
local n = 0
for _, e in ipairs(p) do
  if #redis.call('XRANGE', KEYS[1], e[1], e[1]) == 0 then
    redis.call('XACK', KEYS[1], ARGV[1], e[1])
    n = n + 1
  end
end
return n
"""

# Safe trim: cut to about `maxlen` entries but never past the oldest entry some group has
# pending or not yet read. Looks at most `scan` entries per call. KEYS: stream.
# ARGV: maxlen, scan. Returns the number of entries removed.
TRIM = """
local len = redis.call('XLEN', KEYS[1])
local maxlen = tonumber(ARGV[1])
if len <= maxlen then return 0 end
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(len - maxlen, tonumber(ARGV[2])) + 1)
local function key(id)
  local d = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
end
local function less(a, b)
  local am, as = key(a)
  local bm, bs = key(b)
  return am < bm or (am == bm and as < bs)
end
local cut = head[#head][1]
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for k = 1, #g, 2 do info[g[k]] = g[k+1] end
  local floor = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    floor = redis.call('XPENDING', KEYS[1], info['name'])[2]
  end
  if less(floor, cut) then cut = floor end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', cut)
"""

# Remove consumers idle longer than ARGV[3] ms with nothing pending (never ARGV[2], us).
# KEYS: stream. ARGV: group, consumer, gc_ms. Returns the removed names.
GC_CONSUMERS = """
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for k = 1, #c, 2 do info[c[k]] = c[k+1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed+1] = info['name']
  end
end
return removed
"""


class Scripts:
    """The scripts registered on one client (EVALSHA, falling back to EVAL once per script)."""

    def __init__(self, redis: Redis) -> None:
        r: Any = redis
        self.ack_emit = r.register_script(ACK_EMIT)
        self.retry = r.register_script(RETRY)
        self.promote = r.register_script(PROMOTE)
        self.renew = r.register_script(RENEW)
        self.ack_missing = r.register_script(ACK_MISSING)
        self.trim = r.register_script(TRIM)
        self.gc = r.register_script(GC_CONSUMERS)


_history_codec = msgspec.json.Encoder()


def entry_fields(emit: Emit, attempt: int = 1, history: Sequence[str] = ()) -> list[str | bytes]:
    """The fields of an entry as :data:`PROMOTE` re-adds it (id, attempt, payload, history, extras)."""
    out: list[str | bytes] = ["id", emit.message_id or uuid.uuid4().hex, "a", str(attempt), "m", emit.payload]
    if history:
        out += ["h", _history_codec.encode(list(history))]
    for k, v in emit.extra:
        out += [k, v]
    return out


def batch_args(source: str, batch: Sequence[tuple[str, Sequence[Emit]]], fetch: int = 0) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`ACK_EMIT` (minus group and consumer) for ``(entry, emits)`` pairs."""
    keys: list[str] = [source]
    index: dict[str, int] = {source: 1}
    argv: list[Any] = [len(batch), fetch]
    for entry_id, emits in batch:
        argv += [entry_id, len(emits)]
        for e in emits:
            k = index.get(e.stream)
            if k is None:
                keys.append(e.stream)
                k = index[e.stream] = len(keys)
            argv += [f"{k} {e.maxlen} {e.ttl_seconds} {len(e.extra)}", e.channel, e.message_id or uuid.uuid4().hex,
                     e.payload]  # fmt: skip
            for name, value in e.extra:
                argv += [name, value]
    return keys, argv


def netstrings(parts: Sequence[str | bytes]) -> bytes:
    """A delayed-set member: netstrings ``<len>:<bytes>`` of [stream, field, value, ...]."""
    out = bytearray()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out += b"%d:%s" % (len(b), b)
    return bytes(out)
