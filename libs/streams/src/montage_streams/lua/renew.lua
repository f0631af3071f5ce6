-- Renew or release entries this consumer still owns. KEYS: stream.
-- ARGV: group, consumer, idle_ms, ids...
-- idle_ms 0 (renew): reset their idle time, so nobody reclaims them while they are worked on.
-- idle_ms > 0 (release, for entries read ahead and never started): set their idle time to
-- idle_ms (the claim timeout), so any live consumer's next XAUTOCLAIM takes them, and put their
-- delivery count back by one (that delivery never reached a handler). Returns how many it changed.
local idle = tonumber(ARGV[3])
local n = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    if idle == 0 then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
      local count = math.max(tonumber(p[1][4]) - 1, 0)
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', idle, 'RETRYCOUNT', count, 'JUSTID')
    end
    n = n + 1
  end
end
return n
