-- Ack this consumer's pending entries that no longer exist in the stream (deleted or trimmed
-- while pending; Redis 6.2's XAUTOCLAIM claims them without telling their ids).
-- KEYS: stream. ARGV: group, consumer, limit.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[2])
local n = 0
for _, e in ipairs(p) do
  if #redis.call('XRANGE', KEYS[1], e[1], e[1]) == 0 then
    redis.call('XACK', KEYS[1], ARGV[1], e[1])
    n = n + 1
  end
end
return n
