-- Reserve the next free send slot of one rate limit: never before `not_before`, at least
-- `interval` after the previous reservation (rate_lib.lua's rate_take). The caller waits
-- for the slot; nothing drops.
-- KEYS[1]: the limit's next-free-slot key
-- ARGV:
--   now_ms
--   not_before_ms
--   interval_ms
-- Returns the slot (ms).
return rate_take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
