-- Reserve a send slot of the sender's rate limit in the first gap of its schedule
-- (rate_lib.lua's rate_gap). The caller waits for the slot; nothing drops.
-- KEYS[1]: the sender's reservations (sorted set, member and score = slot ms)
-- ARGV:
--   now_ms
--   not_before_ms
--   interval_ms
--   max_scan     reservations looked at before giving up on a gap (then: after the last)
-- Returns the slot (ms).
return rate_gap(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]))
