-- Which of the wanted message-id prefixes (the part of a message id before the first ARGV[2])
-- have something in flight: an entry of one of the streams that its group has not read yet, or
-- has read and not acknowledged (and that still exists), or a retry waiting in the delayed set.
-- One script, so nothing moves between the places it looks (all keys share a hash tag).
-- KEYS: streams..., the delayed zset (last). ARGV: limit, separator, n_streams, one group per
-- stream, then the wanted prefixes. Returns {complete, found prefixes...}; complete is 0 when a
-- scan stopped at `limit` entries (the answer is then partial).
local limit, sep, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local wanted, found, out = {}, {}, {1}
for i = 4 + n, #ARGV do wanted[ARGV[i]] = true end
local function note(mid)
  if mid == nil then return end
  local cut = string.find(mid, sep, 1, true)
  local prefix = cut and string.sub(mid, 1, cut - 1) or mid
  if wanted[prefix] and not found[prefix] then
    found[prefix] = true
    out[#out+1] = prefix
  end
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
    local last = '0-0'  -- no such group (yet): every entry is unread
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local info = {}
      for k = 1, #g, 2 do info[g[k]] = g[k+1] end
      if info['name'] == group then last = info['last-delivered-id'] end
    end
    local unread = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', limit)
    if #unread >= limit then out[1] = 0 end
    for _, e in ipairs(unread) do note(message_id(e[2])) end
    if last ~= '0-0' then
      local pending = redis.call('XPENDING', key, group, '-', '+', limit)
      if #pending >= limit then out[1] = 0 end
      for _, p in ipairs(pending) do
        local rows = redis.call('XRANGE', key, p[1], p[1])
        if #rows > 0 then note(message_id(rows[1][2])) end
      end
    end
  end
end
local members = redis.call('ZRANGE', KEYS[n + 1], 0, limit - 1)
if #members >= limit then out[1] = 0 end
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
    if parts[k] == 'id' then note(parts[k+1]) end
  end
end
return out
