-- Hand off a batch of entries, then fetch new ones. For each entry, only while `consumer` owns
-- it: XADD its emits (fields id, a=1, m, extras; optionally PUBLISH "<id> <payload>" and EXPIRE
-- the stream) and XACK it. An entry id of '' means "no source entry" (the producer). Returns
-- per entry the new ids, or false if the claim was lost; then, when `fetch` > 0, up to `fetch`
-- new entries of the source (XREADGROUP >) as a flat list of [id, fields] (or false: none).
-- KEYS: [source, emit streams...].
-- ARGV: group, consumer, n_entries, fetch, then per entry: entry id, n_emits, then per emit:
-- key index, maxlen, ttl, n_extra, sharded (1: SPUBLISH, a shard channel in the stream's
-- slot), channel, message id, payload, then n_extra name, value pairs.
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
    local nx = tonumber(ARGV[i+3])
    if owned then
      local key, maxlen, ttl, payload = KEYS[tonumber(ARGV[i])], tonumber(ARGV[i+1]), tonumber(ARGV[i+2]), ARGV[i+7]
      local id
      if maxlen == 0 and nx == 0 then  -- the common case: no argument table to build
        id = redis.call('XADD', key, '*', 'id', ARGV[i+6], 'a', '1', 'm', payload)
      else
        local args = {'XADD', key}
        if maxlen > 0 then args[3] = 'MAXLEN'; args[4] = '~'; args[5] = maxlen end
        args[#args+1] = '*'
        args[#args+1] = 'id'; args[#args+1] = ARGV[i+6]
        args[#args+1] = 'a'; args[#args+1] = '1'
        args[#args+1] = 'm'; args[#args+1] = payload
        for f = i + 8, i + 7 + 2 * nx do args[#args+1] = ARGV[f] end
        id = redis.call(unpack(args))
      end
      ids[#ids+1] = id
      local channel = ARGV[i+5]
      if channel ~= '' then
        redis.call(ARGV[i+4] == '1' and 'SPUBLISH' or 'PUBLISH', channel, id .. ' ' .. payload)
      end
      if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    end
    i = i + 8 + 2 * nx
  end
  if owned then
    if entry ~= '' then redis.call('XACK', src, group, entry) end
    out[e] = ids
  else
    out[e] = false
  end
end
if fetch > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', fetch, 'STREAMS', src, '>')
  out[n+1] = r and r[1][2] or false
end
return out
