-- Register (or renew) a member of a lease group and return the live members.
-- KEYS[1] members zset (member -> expiry ms)
-- ARGV:
--   member
--   now_ms
--   lease_ms
--   gc_ms      the zset expires this long after the last renewal
local expiry = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZRANGE', KEYS[1], 0, -1)
