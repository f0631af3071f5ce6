-- Move an owned entry to the delayed set (due at ARGV[4] ms) and ack it.
-- KEYS: source, delayed zset. ARGV: group, entry, consumer, due_ms, member.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
