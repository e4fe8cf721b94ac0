-- The fast path for a repeat alert: join incident ARGV[3], which the caller saw open under
-- this dedup entry, if the entry still names it; nil otherwise (the incident was resolved
-- or expired meanwhile), and the caller runs trigger.lua, which decides afresh. It needs
-- none of the new-incident arguments trigger.lua takes, which the caller then skips
-- building.
-- KEYS: 1 dedup hash, 2 events stream (the shard's lane 0; the incident's lane is in its hash)
-- ARGV:
--   tag
--   field           dedup field
--   id              incident id
--   now_ms
--   severity
--   alert           Alert protobuf (without id)
--   alert_entry     ALERT timeline entry
--   added_prefix    ALERT_ADDED event prefix
--   kept            alerts kept
--   maxlen          stream maxlen
--   event_field
-- Returns {0, incident id, Incident protobuf, alert id}, or nil.
local tag, id = ARGV[1], ARGV[3]
if redis.call('HGET', KEYS[1], ARGV[2]) ~= id then
  return nil
end
local counters = redis.call('HMGET', inc_key(tag, id), 'n', 'v', 'sev', 'ln')
if not counters[1] then
  return nil
end
return join_incident(tag, id, counters, ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8],
                     tonumber(ARGV[9]), KEYS[2], ARGV[10], ARGV[11])
