-- Mirror an incident's status (newer versions only) and, when it is no longer triggered
-- or when asked to, cancel every cycle of the incident with its pending timers.
-- KEYS: incident state, incident cycles, timer keys (6)
-- ARGV:
--   tag        timer tag
--   prefix     key prefix
--   mode       'mirror' or 'cancel'
--   ttl_ms
--   version    (for 'mirror', as the next three)
--   status     IncidentStatus
--   summary
--   service    service id
--   number     the incident's number (0: none yet)
--   created    when the incident was created, ms (0: not known; kept from before)
-- Returns {applied (0/1), timers cancelled}.
local tag, prefix, mode = ARGV[1], ARGV[2], ARGV[3]
local applied = 0
if mode == 'mirror' then
  local known = tonumber(redis.call('HGET', KEYS[1], 'v') or '-1')
  if tonumber(ARGV[5]) > known then
    redis.call('HSET', KEYS[1], 'v', ARGV[5], 'st', ARGV[6], 'sum', ARGV[7], 'svc', ARGV[8],
               'nr', ARGV[9])
    if tonumber(ARGV[10] or '0') > 0 then
      redis.call('HSET', KEYS[1], 'ca', ARGV[10])
    end
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    applied = 1
  end
end
local cancelled = 0
if mode == 'cancel' or (applied == 1 and tonumber(ARGV[6]) ~= INCIDENT_TRIGGERED) then
  local cycles = redis.call('HGETALL', KEYS[2])
  for i = 2, #cycles, 2 do
    cancelled = cancelled + cycle_cancel(prefix .. 'cycle:' .. cycles[i], tag, cycles[i])
  end
end
return {applied, cancelled}
