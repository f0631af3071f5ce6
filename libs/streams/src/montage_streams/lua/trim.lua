-- Safe trim: cut to about `maxlen` entries but never past the oldest entry some group has
-- pending or not yet read. Looks at most `scan` entries per call. KEYS: stream.
-- ARGV: maxlen, scan. Returns the number of entries removed.
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
