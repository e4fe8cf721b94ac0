-- Reserve a send slot of the sender's rate limit in the first gap of its schedule: the
-- earliest moment at or after max(now, not_before) that is at least `interval` from every
-- slot already reserved. Reservations are kept (a sorted set scored by slot) until they
-- are past, so a page whose destination may send now takes a free slot between pages
-- that wait for their own destination's interval, instead of the slot after the last
-- reservation: a storm paging one person every few seconds leaves the sender's other
-- slots to everyone else. The caller waits for the slot; nothing drops.
-- KEYS[1]: the sender's reservations (sorted set, member and score = slot ms)
-- ARGV:
--   now_ms
--   not_before_ms
--   interval_ms
--   max_scan     reservations looked at before giving up on a gap (then: after the last)
-- Returns the slot (ms).
local now, not_before = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval, max_scan = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - interval))
local slot = math.max(now, not_before)
local taken = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (slot - interval), '+inf',
  'LIMIT', 0, max_scan)
local found = false
for _, member in ipairs(taken) do
  local reserved = tonumber(member)
  if reserved >= slot + interval then
    found = true
    break
  end
  slot = math.max(slot, reserved + interval)
end
if not found and #taken == max_scan then
  local last = redis.call('ZREVRANGE', KEYS[1], 0, 0)
  slot = math.max(slot, tonumber(last[1]) + interval)
end
redis.call('ZADD', KEYS[1], slot, slot)
-- kept until a minute after its latest reservation (a slot in a gap is not the latest)
local latest = tonumber(redis.call('ZREVRANGE', KEYS[1], 0, 0)[1])
redis.call('PEXPIRE', KEYS[1], latest + interval - now + 60000)
return slot
