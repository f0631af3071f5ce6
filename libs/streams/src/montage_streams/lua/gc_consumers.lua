-- Remove consumers idle longer than ARGV[3] ms with nothing pending (never ARGV[2], us).
-- KEYS: stream. ARGV: group, consumer, gc_ms. Returns the removed names.
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
