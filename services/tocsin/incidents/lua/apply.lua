-- Write one change of an incident that the caller computed from state version `sv`:
-- compare-and-set, so concurrent writers never lose an update (the loser re-reads and
-- decides again), and the state, status index, timeline, dedup entry, retention, snooze
-- timer and outbox event change together or not at all.
-- KEYS: 1 incident hash, 2 timeline, 3 alerts, 4 events stream (the shard's lane 0; the
--       event goes to the incident's lane, `ln` in its hash), 5 old status index,
--       6 new status index, 7 dedup hash, 8.. snooze timer keys (timer library)
-- ARGV:
--   id               incident id
--   expected_sv      '' = keep p and skip the check (for notes)
--   state            the new p
--   now_ms
--   member           index member
--   timeline_entry   TimelineEntry protobuf
--   prefix           the event's prefix
--   release          dedup field to release ('' = none), if it still names this incident
--   redirect         '' = delete it; else the value it gets instead: the merge redirect
--                    'm:<id>:<field>' (keys.redirect) of the incident this one merged into
--   expire_s         '0' = none
--   maxlen           stream maxlen
--   event_field
--   timer_action     '', 'arm' or 'cancel' (the snooze timer)
--   timer_tag
--   timer_due_ms
--   timer_payload    snooze.encode_payload
-- Returns {1, Incident protobuf} when written, {0} on a version conflict, {-1} if absent.
local ik = KEYS[1]
local sv = redis.call('HGET', ik, 'sv')
if not sv then
  return {-1}
end
if ARGV[2] ~= '' then
  if sv ~= ARGV[2] then
    return {0}
  end
  redis.call('HSET', ik, 'p', ARGV[3], 'sv', tonumber(sv) + 1)
end
redis.call('HINCRBY', ik, 'v', 1)
redis.call('HSET', ik, 'u', ARGV[4])
local o = refresh_overlay(ik)
if KEYS[5] ~= KEYS[6] then
  redis.call('ZREM', KEYS[5], ARGV[5])
  redis.call('ZADD', KEYS[6], 0, ARGV[5])
end
redis.call('RPUSH', KEYS[2], ARGV[6])
if ARGV[8] ~= '' and redis.call('HGET', KEYS[7], ARGV[8]) == ARGV[1] then
  if ARGV[9] == '' then
    redis.call('HDEL', KEYS[7], ARGV[8])
  else
    redis.call('HSET', KEYS[7], ARGV[8], ARGV[9])
  end
end
if ARGV[10] ~= '0' then
  for i = 1, 3 do
    redis.call('EXPIRE', KEYS[i], ARGV[10])
  end
end
if ARGV[13] == 'arm' then
  timer_arm(ARGV[14], ARGV[1], ARGV[15], ARGV[16])
elseif ARGV[13] == 'cancel' then
  timer_cancel(ARGV[14], ARGV[1])
end
local incident = redis.call('HGET', ik, 'p') .. o
publish(lane_stream(KEYS[4], redis.call('HGET', ik, 'ln')), ARGV[11], ARGV[12], ARGV[7],
        incident, nil)
return {1, incident}
