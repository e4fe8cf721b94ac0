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
-- The same script follows a merge redirect (keys.redirect): `field` and `id` are then the
-- incident the merged one was merged into, joined if its own entry still names it.
-- Returns {0, incident id, Incident protobuf, alert id}; {-3, redirect} when the field
-- holds a merge redirect instead (the caller follows it); or nil.
local tag, id = ARGV[1], ARGV[3]
local current = redis.call('HGET', KEYS[1], ARGV[2])
if current ~= id then
  if current and string.sub(current, 1, 2) == 'm:' then
    return {-3, current}
  end
  return nil
end
local counters = redis.call('HMGET', inc_key(tag, id), 'n', 'v', 'sev', 'ln')
if not counters[1] then
  return nil
end
return join_incident(tag, id, counters, ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8],
                     tonumber(ARGV[9]), KEYS[2], ARGV[10], ARGV[11])
