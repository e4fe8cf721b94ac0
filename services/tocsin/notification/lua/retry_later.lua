-- A rule's send that Twilio refused WITHOUT processing it (throttled, 5xx, no
-- connection) is tried again later from the rule's own timer, so no process holds it
-- meanwhile and none loses it by dying: in one step the SENDING attempt is removed
-- (Twilio said nothing was sent, so nothing can be sent twice) and the timer re-armed at
-- `due_ms` with the retry's payload; fire.lua then records a new attempt, checking again
-- that the cycle and the incident still want the page. A process that dies before this
-- step leaves the attempt SENDING: the sweep marks it UNKNOWN, never resent.
-- KEYS: cycle, attempts, sending index, timer keys (6)
-- ARGV:
--   tag          timer tag
--   id           the attempt id (= the rule's timer id)
--   due_ms       when to try again
--   payload      the timer payload of the retry
-- Returns 1 when re-armed; 0 when the cycle is gone or cancelled (replaced, acknowledged)
-- or the attempt is not SENDING (then the caller records the failure).
local tag, id = ARGV[1], ARGV[2]
local cycle = redis.call('HMGET', KEYS[1], 'inc', 'x')
if not cycle[1] or cycle[2] == '1' then
  return 0
end
local raw = redis.call('HGET', KEYS[2], id)
if not raw or cjson.decode(raw).st ~= ATTEMPT_SENDING then
  return 0
end
redis.call('HDEL', KEYS[2], id)
redis.call('ZREM', KEYS[3], attempt_member(KEYS[2], id))
timer_arm(tag, id, tonumber(ARGV[3]), ARGV[4])
return 1
