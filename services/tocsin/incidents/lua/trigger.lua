-- Take an alert: join the open incident that has its dedup entry, or open a new one.
-- One script, so two triggers with the same key can never open two incidents.
-- KEYS: 1 dedup hash, 2 incident sequence, 3 events stream (the shard's lane 0),
--       4 triggered status index, 5 the shard's number index (zset: id scored by number)
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
--   window_ms           time grouping: join the open incident only if its last alert came
--                       less than this long ago, else open a new one under the field
--                       (the old one stays open); 0 = always join
--   dead                a merge redirect ('m:<id>:<field>', see keys.redirect) that the
--                       caller found leads to no open incident: dropped if the field still
--                       holds it ('' = none)
--   number              the new incident's number (keys.NUMBER_SEQUENCE), '0' = none yet
-- Returns {1 if created else 0, incident id, Incident protobuf, alert id}; or, writing
-- nothing, {-1} when a new incident is needed and no number was given (the caller takes
-- one and runs again), {-2} when this shard already has the number (a counter that went
-- back, e.g. a failover lost its last increments: the caller raises it and runs again),
-- {-3, redirect} when the field holds a merge redirect other than `dead` (the incident
-- once open under it was merged into another: the caller joins that one if it is open,
-- else runs again with the redirect as `dead`).
-- The incident's own keys are named here, since its id is allocated here; they carry the
-- same hash tag as KEYS, so the script stays in one Cluster slot.
local tag, now, severity, kept = ARGV[1], ARGV[5], tonumber(ARGV[7]), tonumber(ARGV[14])
local id = redis.call('HGET', KEYS[1], ARGV[4])
if id and string.sub(id, 1, 2) == 'm:' then
  if id ~= ARGV[19] then
    return {-3, id}
  end
  redis.call('HDEL', KEYS[1], ARGV[4])
  id = false
end
local counters
if id then
  -- One read for the counters, which also tells whether the incident still exists.
  counters = redis.call('HMGET', inc_key(tag, id), 'n', 'v', 'sev', 'ln', 'la')
  if not counters[1] then
    redis.call('HDEL', KEYS[1], ARGV[4])
    id = false
  elseif tonumber(ARGV[18]) > 0 and tonumber(now) - tonumber(counters[5]) >= tonumber(ARGV[18]) then
    id = false
  end
end

if id then
  return join_incident(tag, id, counters, now, severity, ARGV[9], ARGV[11], ARGV[13], kept,
                       KEYS[3], ARGV[15], ARGV[16])
end

local number = ARGV[20]
if number == '0' then
  return {-1}
end
if #redis.call('ZRANGEBYSCORE', KEYS[5], number, number, 'LIMIT', 0, 1) > 0 then
  return {-2}
end
local k = redis.call('INCR', KEYS[2])
id = int_str(k * tonumber(ARGV[3]) + tonumber(ARGV[2]))
local ik = inc_key(tag, id)
local p = ARGV[8] .. pb_bytes(PB_KEY.Incident.id, id) .. PB_KEY.Incident.number
  .. pb_varint(number)
redis.call('HSET', ik, 'p', p, 'sv', 1, 'v', 1, 'n', 1, 'sev', severity, 'u', now, 'la', now,
           'ln', ARGV[17], 'nr', number)
redis.call('ZADD', KEYS[5], number, id)
local o = refresh_overlay(ik)
local alert = ARGV[9] .. pb_bytes(PB_KEY.Alert.id, '1')
redis.call('RPUSH', ik .. ':alerts', alert)
redis.call('RPUSH', ik .. ':timeline', ARGV[10])
redis.call('HSET', KEYS[1], ARGV[4], id)
redis.call('ZADD', KEYS[4], 0, index_member(ARGV[6], id))
local incident = p .. o
publish(lane_stream(KEYS[3], ARGV[17]), ARGV[15], ARGV[16], ARGV[12], incident, alert)
return {1, id, incident, '1'}
