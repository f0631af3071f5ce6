-- Move due delayed entries back to their streams. KEYS: delayed zset. ARGV: now_ms, limit.
-- A member is netstrings "<len>:<bytes>" of [stream, field, value, ...] (binary safe).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local parts = {}
  local i = 1
  while i <= #member do
    local c = string.find(member, ':', i, true)
    local n = tonumber(string.sub(member, i, c - 1))
    parts[#parts+1] = string.sub(member, c + 1, c + n)
    i = c + n + 1
  end
  local args = {'XADD', parts[1], '*'}
  for k = 2, #parts do args[#args+1] = parts[k] end
  redis.call(unpack(args))
  redis.call('ZREM', KEYS[1], member)
end
return #due
