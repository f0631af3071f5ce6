-- Remove what is in flight of the wanted message-id prefixes (the part of a message id before the
-- first ARGV[2]), as in_flight.lua finds it: an entry its group has not read yet (XDEL), has read
-- and not acknowledged (XACK, then XDEL: its consumer's hand-off and renewals then find it gone),
-- or a retry of one of these streams waiting in the delayed set (ZREM). One script, so nothing moves between the places it
-- looks (all keys share a hash tag).
-- KEYS: streams..., the delayed zset (last). ARGV: limit, separator, n_streams, one group per
-- stream, then the wanted prefixes. Returns {complete, removed}; complete is 0 when a scan stopped
-- at `limit` entries (call again: what was removed is gone, the rest comes next).
local limit, sep, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local wanted, complete, removed = {}, 1, 0
for i = 4 + n, #ARGV do wanted[ARGV[i]] = true end
local function matches(mid)
  if mid == nil then return false end
  local cut = string.find(mid, sep, 1, true)
  return wanted[cut and string.sub(mid, 1, cut - 1) or mid] == true
end
local function message_id(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'id' then return fields[i+1] end
  end
  return nil
end
for s = 1, n do
  local key, group = KEYS[s], ARGV[3 + s]
  if redis.call('EXISTS', key) == 1 then
    local last = '0-0'
    local grouped = false
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local info = {}
      for k = 1, #g, 2 do info[g[k]] = g[k+1] end
      if info['name'] == group then last = info['last-delivered-id']; grouped = true end
    end
    local unread = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', limit)
    if #unread >= limit then complete = 0 end
    for _, e in ipairs(unread) do
      if matches(message_id(e[2])) then
        redis.call('XDEL', key, e[1])
        removed = removed + 1
      end
    end
    if grouped then
      local pending = redis.call('XPENDING', key, group, '-', '+', limit)
      if #pending >= limit then complete = 0 end
      for _, p in ipairs(pending) do
        local rows = redis.call('XRANGE', key, p[1], p[1])
        if #rows > 0 and matches(message_id(rows[1][2])) then
          redis.call('XACK', key, group, p[1])
          redis.call('XDEL', key, p[1])
          removed = removed + 1
        end
      end
    end
  end
end
local ours = {}
for s = 1, n do ours[KEYS[s]] = true end
local members = redis.call('ZRANGE', KEYS[n + 1], 0, limit - 1)
if #members >= limit then complete = 0 end
for _, member in ipairs(members) do  -- netstrings: stream, then field, value, ...
  local parts, i = {}, 1
  while i <= #member do
    local c = string.find(member, ':', i, true)
    if c == nil then break end
    local len = tonumber(string.sub(member, i, c - 1))
    parts[#parts+1] = string.sub(member, c + 1, c + len)
    i = c + len + 1
  end
  for k = 2, #parts - 1, 2 do
    if parts[k] == 'id' and ours[parts[1]] and matches(parts[k+1]) then
      redis.call('ZREM', KEYS[n + 1], member)
      removed = removed + 1
      break
    end
  end
end
return {complete, removed}
