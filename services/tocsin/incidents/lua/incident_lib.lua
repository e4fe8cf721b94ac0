-- tocsin incidents: key names and protobuf helpers that the incident scripts prepend
-- (after runtime/lua/proto_constants.lua, whose PB_KEY gives every field key used here).
--
-- Keys (see keys.py): under the shard's hash tag T, incident <id> is the hash
-- tocsin:T:inc:<id> with the lists tocsin:T:inc:<id>:alerts and :timeline.
--
-- The hash keeps the Incident protobuf in two parts: `p`, everything the caller computes
-- (written by compare-and-set on `sv`), and `o`, the counters these scripts maintain
-- themselves (severity, alert_count, updated_at, version, last_alert_at), rebuilt from the
-- plain fields n, sev, u, v, la after every write. Protobuf decodes `p .. o` as one
-- message in which the later fields win, so a repeat alert never has to decode or
-- re-encode the incident, and never conflicts with an acknowledgement.

local function inc_key(tag, id)
  return 'tocsin:' .. tag .. ':inc:' .. id
end

local function int_str(n)
  return string.format('%.0f', n)
end

-- "<created ms, 13 digits>-<id, 16 digits>": bytes order = time order (keys.index_member).
local function index_member(created13, id)
  return created13 .. '-' .. string.rep('0', 16 - #id) .. id
end

local function pb_varint(n)
  n = math.floor(tonumber(n))
  local bytes = {}
  while n >= 128 do
    bytes[#bytes + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  bytes[#bytes + 1] = string.char(n)
  return table.concat(bytes)
end

-- A length-delimited field: `tag` is the encoded field key.
local function pb_bytes(tag, payload)
  return tag .. pb_varint(#payload) .. payload
end

-- google.protobuf.Timestamp with both fields written, even when zero, so it replaces
-- (rather than merges into) an earlier value.
local function pb_timestamp(ms)
  ms = tonumber(ms)
  return PB_KEY.Timestamp.seconds .. pb_varint(math.floor(ms / 1000))
    .. PB_KEY.Timestamp.nanos .. pb_varint((ms % 1000) * 1000000)
end


-- The counters' protobuf (the `o` part of an incident hash) for these values.
local function overlay(sev, n, u, v, la)
  local key = PB_KEY.Incident
  return key.severity .. pb_varint(sev)
    .. key.alert_count .. pb_varint(n)
    .. pb_bytes(key.updated_at, pb_timestamp(u))
    .. key.version .. pb_varint(v)
    .. pb_bytes(key.last_alert_at, pb_timestamp(la))
end

-- Rebuild and store the counters' protobuf of incident hash `ik`; returns it.
local function refresh_overlay(ik)
  local f = redis.call('HMGET', ik, 'sev', 'n', 'u', 'v', 'la')
  local o = overlay(f[1], f[2], f[3], f[4], f[5])
  redis.call('HSET', ik, 'o', o)
  return o
end

-- The outbox stream of an incident: `base` is its shard's lane-0 stream
-- (tocsin:T:incident-events); lane n > 0 is base .. ':lane:' .. n (runtime/events.py
-- stream_key). The lane is chosen from the service when the incident opens and kept in
-- its hash (`ln`; absent = 0, as for incidents opened before lanes), so every event of an
-- incident goes to one stream and keeps its order. Same hash tag, so same Cluster slot.
local function lane_stream(base, lane)
  if not lane or lane == '0' or lane == false then
    return base
  end
  return base .. ':lane:' .. lane
end

-- XADD an IncidentEvent: the caller's prefix (kind, at, actor, traceparent, note) plus the
-- incident and, when given, the alert.
local function publish(stream, maxlen, field, prefix, incident, alert)
  local event = prefix .. pb_bytes(PB_KEY.IncidentEvent.incident, incident)
  if alert then
    event = event .. pb_bytes(PB_KEY.IncidentEvent.alert, alert)
  end
  return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', field, event)
end

-- Add an alert to open incident `id` (tag `tag`) whose counters n, v, sev, ln were just
-- read: counters, alert, timeline (the first `kept` alerts) and the ALERT_ADDED event, on
-- the incident's lane of `stream` (its shard's lane-0 stream).
-- Returns {0, id, Incident protobuf, alert id}, as trigger.lua does for a repeat.
local function join_incident(tag, id, counters, now, severity, alert_pb, entry, prefix,
                             kept, stream, maxlen, field)
  local ik = inc_key(tag, id)
  local n = tonumber(counters[1]) + 1
  local v = tonumber(counters[2]) + 1
  local sev = math.max(tonumber(counters[3]), severity)
  local o = overlay(sev, n, now, v, now)
  redis.call('HSET', ik, 'n', n, 'v', v, 'sev', sev, 'u', now, 'la', now, 'o', o)
  local alert = alert_pb .. pb_bytes(PB_KEY.Alert.id, int_str(n))
  redis.call('RPUSH', ik .. ':alerts', alert)
  redis.call('LTRIM', ik .. ':alerts', -kept, -1)
  -- The timeline records the first `kept` alerts; alert_count counts them all.
  if n <= kept then
    redis.call('RPUSH', ik .. ':timeline', entry)
  end
  local incident = redis.call('HGET', ik, 'p') .. o
  publish(lane_stream(stream, counters[4]), maxlen, field, prefix, incident, alert)
  return {0, id, incident, int_str(n)}
end
