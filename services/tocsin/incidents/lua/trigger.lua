-- Take an alert: join the open incident that has its dedup entry, or open a new one.
-- One script, so two triggers with the same key can never open two incidents.
-- KEYS: 1 dedup hash, 2 incident sequence, 3 events stream (the shard's lane 0),
--       4 triggered status index
-- ARGV:
--   tag
--   shard
--   shards              shard count
--   field               dedup field
--   now_ms
--   now13               now as 13 digits
--   severity
--   incident            new Incident protobuf (without id and counters)
--   alert               Alert protobuf (without id)
--   triggered_entry     TRIGGERED timeline entry
--   alert_entry         ALERT timeline entry
--   triggered_prefix    TRIGGERED event prefix
--   added_prefix        ALERT_ADDED event prefix
--   kept                alerts kept
--   maxlen              stream maxlen
--   event_field
--   lane                the new incident's event lane (from its service)
-- Returns {1 if created else 0, incident id, Incident protobuf, alert id}.
-- The incident's own keys are named here, since its id is allocated here; they carry the
-- same hash tag as KEYS, so the script stays in one Cluster slot.
local tag, now, severity, kept = ARGV[1], ARGV[5], tonumber(ARGV[7]), tonumber(ARGV[14])
local id = redis.call('HGET', KEYS[1], ARGV[4])
local counters
if id then
  -- One read for the counters, which also tells whether the incident still exists.
  counters = redis.call('HMGET', inc_key(tag, id), 'n', 'v', 'sev', 'ln')
  if not counters[1] then
    redis.call('HDEL', KEYS[1], ARGV[4])
    id = false
  end
end

if id then
  return join_incident(tag, id, counters, now, severity, ARGV[9], ARGV[11], ARGV[13], kept,
                       KEYS[3], ARGV[15], ARGV[16])
end

local k = redis.call('INCR', KEYS[2])
id = int_str(k * tonumber(ARGV[3]) + tonumber(ARGV[2]))
local ik = inc_key(tag, id)
local p = ARGV[8] .. pb_bytes(PB_KEY.Incident.id, id)
redis.call('HSET', ik, 'p', p, 'sv', 1, 'v', 1, 'n', 1, 'sev', severity, 'u', now, 'la', now,
           'ln', ARGV[17])
local o = refresh_overlay(ik)
local alert = ARGV[9] .. pb_bytes(PB_KEY.Alert.id, '1')
redis.call('RPUSH', ik .. ':alerts', alert)
redis.call('RPUSH', ik .. ':timeline', ARGV[10])
redis.call('HSET', KEYS[1], ARGV[4], id)
redis.call('ZADD', KEYS[4], 0, index_member(ARGV[6], id))
local incident = p .. o
publish(lane_stream(KEYS[3], ARGV[17]), ARGV[15], ARGV[16], ARGV[12], incident, alert)
return {1, id, incident, '1'}
