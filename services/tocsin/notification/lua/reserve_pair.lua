-- Reserve a page's slots of both rate limits at once, as reserve.lua then reserve_gap.lua
-- would one after the other: the destination's next free slot, then the sender's first
-- gap no earlier than it. Only where both keys are on one Redis server (their hash tags
-- differ: on a Cluster the two scripts go one after the other). The caller waits for the
-- slot; nothing drops.
-- KEYS[1]: the destination's next-free-slot key; KEYS[2]: the sender's reservations
-- ARGV:
--   now_ms
--   number_interval_ms
--   sender_interval_ms
--   max_scan     reservations looked at before giving up on a gap (then: after the last)
-- Returns the slot (ms).
local now = tonumber(ARGV[1])
local slot = rate_take(KEYS[1], now, now, tonumber(ARGV[2]))
return rate_gap(KEYS[2], now, slot, tonumber(ARGV[3]), tonumber(ARGV[4]))
