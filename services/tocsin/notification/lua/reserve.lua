-- Reserve the next free send slot of one rate limit: never before `not_before`, at least
-- `interval` after the previous reservation. The caller waits for the slot; nothing drops.
-- KEYS[1]: the limit's next-free-slot key
-- ARGV:
--   now_ms
--   not_before_ms
--   interval_ms
-- Returns the slot (ms).
local now, not_before, interval = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local slot = math.max(now, not_before, tonumber(redis.call('GET', KEYS[1]) or '0'))
redis.call('SET', KEYS[1], slot + interval, 'PX', slot + interval - now + 60000)
return slot
