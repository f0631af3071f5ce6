-- Hand off a batch of entries, then fetch new ones. For each entry, only while `consumer` owns
-- it: XADD its emits (fields id, m, extras; optionally PUBLISH "<id> <payload>" and EXPIRE
-- the stream) and XACK it. A first attempt carries no attempt field (`a`): readers take 1 when it is
-- absent, and every field an entry does not carry saves Redis work on its write and on each read.
-- An entry id of '' means "no source entry" (the producer). Returns per entry the new ids
-- (`mode` 1) or 1 (`mode` 0 or 2: the consumer needs no ids, and returning them costs Redis
-- CPU), or false if the claim was lost; then, when `fetch` > 0, up to `fetch` new entries of the
-- source (XREADGROUP >) as a flat list of [id, fields] (or false: none). The consumer fetches
-- with a plain XREADGROUP sent right behind the script in the same write instead (converting
-- entries to Lua and back costs Redis more than the read).
-- KEYS: [source, emit streams...].
-- ARGV: group, consumer, n_entries, fetch, lo, hi, mode, then the entries:
-- - `mode` 0 or 1, per entry: entry id, n_emits, then per emit either a plain one: key index
--   (> 0), message id, payload; or a full one: -key index, maxlen, ttl, n_extra, sharded (1:
--   SPUBLISH, a shard channel in the stream's slot), channel, message id, payload, then n_extra
--   name, value pairs.
-- - `mode` 2 (the common hand-off: one plain emit per entry, all to KEYS[2]), per entry: entry
--   id, message id, payload. Two arguments and a loop fewer per entry: about a tenth of the
--   script's Redis CPU.
-- Ownership: one XPENDING of this consumer's entries from `lo` to `hi` (a guess at the batch's
-- range: '' for none), then one XPENDING per entry it did not list; so the answer never depends
-- on the guess, only the number of calls does.
local src, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local n, fetch, mode = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[7]
local want_ids = mode == '1'
local mine = {}  -- true: this consumer's (listed); false: handed off earlier in this batch
if ARGV[5] ~= '' then
  for _, p in ipairs(redis.call('XPENDING', src, group, ARGV[5], ARGV[6], 10 * n + 100, consumer)) do
    mine[p[1]] = true
  end
end
-- Whether `consumer` owns `entry` (and it was not handed off earlier in this batch).
local function owns(entry)
  local owned = mine[entry]
  if owned == nil then  -- not listed by the range query: checked on its own
    local p = redis.call('XPENDING', src, group, entry, entry, 1)
    owned = #p > 0 and p[1][2] == consumer
  end
  mine[entry] = false  -- twice in one batch: handed off once
  return owned
end
local out = {}
local acks = {'XACK', src, group}
local i = 8
if mode == '2' then
  local dst = KEYS[2]
  for e = 1, n do
    local entry = ARGV[i]
    if owns(entry) then
      redis.call('XADD', dst, '*', 'id', ARGV[i+1], 'm', ARGV[i+2])
      acks[#acks+1] = entry
      out[e] = 1
    else
      out[e] = false
    end
    i = i + 3
  end
else  -- mode 0 or 1
  for e = 1, n do
    local entry, nemits = ARGV[i], tonumber(ARGV[i+1])
    i = i + 2
    local owned = entry == '' or owns(entry)
    local ids = want_ids and {} or nil
    for _ = 1, nemits do
      local k = tonumber(ARGV[i])
      if k > 0 then  -- the common case: no argument table to build
        if owned then
          local id = redis.call('XADD', KEYS[k], '*', 'id', ARGV[i+1], 'm', ARGV[i+2])
          if ids then ids[#ids+1] = id end
        end
        i = i + 3
      else
        local nx = tonumber(ARGV[i+3])
        if owned then
          local key, maxlen, ttl, payload = KEYS[-k], tonumber(ARGV[i+1]), tonumber(ARGV[i+2]), ARGV[i+7]
          local args = {'XADD', key}
          if maxlen > 0 then args[3] = 'MAXLEN'; args[4] = '~'; args[5] = maxlen end
          args[#args+1] = '*'
          args[#args+1] = 'id'; args[#args+1] = ARGV[i+6]
          args[#args+1] = 'm'; args[#args+1] = payload
          for f = i + 8, i + 7 + 2 * nx do args[#args+1] = ARGV[f] end
          local id = redis.call(unpack(args))
          if ids then ids[#ids+1] = id end
          local channel = ARGV[i+5]
          if channel ~= '' then
            redis.call(ARGV[i+4] == '1' and 'SPUBLISH' or 'PUBLISH', channel, id .. ' ' .. payload)
          end
          if ttl > 0 then redis.call('EXPIRE', key, ttl) end
        end
        i = i + 8 + 2 * nx
      end
    end
    if owned then
      if entry ~= '' then acks[#acks+1] = entry end
      out[e] = ids or 1
    else
      out[e] = false
    end
  end
end
if #acks > 3 then redis.call(unpack(acks)) end
if fetch > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', fetch, 'STREAMS', src, '>')
  out[n+1] = r and r[1][2] or false
end
return out
