-- Append a timeline entry written by another service, at most once per idempotency key,
-- and, for an entry that is also an event (an escalation hop), the outbox event with it.
-- KEYS: 1 incident hash, 2 timeline, 3 events stream (the shard's lane 0; the event goes
--       to the incident's lane), 4 idempotency key (optional)
-- ARGV:
--   entry        TimelineEntry protobuf
--   ttl_s        idempotency key TTL
--   prefix       the event's prefix ('' = no event)
--   maxlen       stream maxlen
--   event_field
-- Returns 1 appended, 0 key seen before, -1 no such incident.
local ik = KEYS[1]
if redis.call('EXISTS', ik) == 0 then
  return -1
end
if KEYS[4] and not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[2]) then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[1])
if ARGV[3] ~= '' then
  local incident = redis.call('HGET', ik, 'p') .. refresh_overlay(ik)
  publish(lane_stream(KEYS[3], redis.call('HGET', ik, 'ln')), ARGV[4], ARGV[5], ARGV[3],
          incident, nil)
end
return 1
