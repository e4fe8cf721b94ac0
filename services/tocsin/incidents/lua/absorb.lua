-- Merge: append another incident's alerts to the open incident KEYS[1], once per merged
-- incident (the idempotency key), with a timeline entry and a NOTE_ADDED event.
-- KEYS: 1 incident hash, 2 alerts list, 3 timeline list, 4 idempotency key,
--       5 events stream (the shard's lane 0)
-- ARGV:
--   now_ms
--   severity      the highest severity of the merged alerts
--   entry         TimelineEntry protobuf
--   prefix        NOTE_ADDED event prefix
--   kept          alerts kept
--   maxlen        stream maxlen
--   event_field
--   ttl_s         how long the idempotency key is kept
--   alerts...     Alert protobufs without their id, oldest first
-- Returns -1 (no such incident), 0 (merged before) or {1, Incident protobuf}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if not redis.call('SET', KEYS[4], 1, 'NX', 'EX', ARGV[8]) then
  return 0
end
local ik = KEYS[1]
local c = redis.call('HMGET', ik, 'n', 'v', 'sev', 'ln')
local n = tonumber(c[1])
local kept = tonumber(ARGV[5])
for i = 9, #ARGV do
  n = n + 1
  redis.call('RPUSH', KEYS[2], ARGV[i] .. pb_bytes(PB_KEY.Alert.id, int_str(n)))
end
redis.call('LTRIM', KEYS[2], -kept, -1)
local sev = math.max(tonumber(c[3]), tonumber(ARGV[2]))
redis.call('HSET', ik, 'n', n, 'v', tonumber(c[2]) + 1, 'sev', sev, 'u', ARGV[1])
local o = refresh_overlay(ik)
redis.call('RPUSH', KEYS[3], ARGV[3])
local incident = redis.call('HGET', ik, 'p') .. o
publish(lane_stream(KEYS[5], c[4]), ARGV[6], ARGV[7], ARGV[4], incident)
return {1, incident}
