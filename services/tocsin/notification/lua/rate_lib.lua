-- Send rate limits (ratelimit.py), as functions for the scripts that reserve slots:
-- reserve.lua, reserve_gap.lua, and reserve_pair.lua, which takes a destination's slot
-- and then the sender's in one call when both keys are on one Redis server.

-- The next free slot of one limit (`key`, a string: the slot after the last reservation):
-- never before `not_before`, at least `interval` after the previous reservation.
local function rate_take(key, now, not_before, interval)
  local slot = math.max(now, not_before, tonumber(redis.call('GET', key) or '0'))
  redis.call('SET', key, slot + interval, 'PX', slot + interval - now + 60000)
  return slot
end

-- A slot of the sender's limit in the first gap of its schedule (`key`, a sorted set,
-- member and score = slot ms): the earliest moment at or after max(now, not_before) that
-- is at least `interval` from every slot already reserved. Reservations are kept until
-- they are past, so a page whose destination may send now takes a free slot between
-- pages that wait for their own destination's interval, instead of the slot after the
-- last reservation: a storm paging one person every few seconds leaves the sender's
-- other slots to everyone else. `max_scan`: reservations looked at before giving up on a
-- gap (then: after the last).
local function rate_gap(key, now, not_before, interval, max_scan)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now - interval))
  local slot = math.max(now, not_before)
  local taken = redis.call('ZRANGEBYSCORE', key, '(' .. (slot - interval), '+inf',
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
    local last = redis.call('ZREVRANGE', key, 0, 0)
    slot = math.max(slot, tonumber(last[1]) + interval)
  end
  redis.call('ZADD', key, slot, slot)
  -- kept until a minute after its latest reservation (a slot in a gap is not the latest)
  local latest = tonumber(redis.call('ZREVRANGE', key, 0, 0)[1])
  redis.call('PEXPIRE', key, latest + interval - now + 60000)
  return slot
end
