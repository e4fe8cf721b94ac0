-- Notification cycles: a library of local functions (prepend after proto_constants,
-- timer_lib and attempt_lib).
--
-- A cycle is a hash (see keys.py): inc, user, tp, code, rules (JSON list of
-- {cm, d, t}), n (rule count), c (created ms), k (the Notify idempotency key), lv (when
-- the escalation's next level is due, 0 if not known), x ('1' once cancelled). Rule i's
-- timer id
-- is '<cycle id>-<i>'; timers live under the incident shard's 'notify' namespace `tag`.

local INCIDENT_TRIGGERED = IncidentStatus.TRIGGERED

-- Mark a cycle cancelled and cancel its pending rule timers. Returns how many it cancelled.
local function cycle_cancel(cycle_key, tag, cycle_id)
  if redis.call('EXISTS', cycle_key) == 0 then
    return 0
  end
  redis.call('HSET', cycle_key, 'x', '1')
  local n = tonumber(redis.call('HGET', cycle_key, 'n') or '0')
  local cancelled = 0
  for i = 0, n - 1 do
    cancelled = cancelled + timer_cancel(tag, cycle_id .. '-' .. i)
  end
  return cancelled
end

-- Move on after rule `from_rule` could not reach the user: re-arm, due now, the first
-- later rule still waiting that uses another contact method. Returns its index, or -1.
local function cycle_advance(cycle_key, tag, cycle_id, from_rule, failed_cm, now)
  local fields = redis.call('HMGET', cycle_key, 'rules', 'x')
  if not fields[1] or fields[2] == '1' then
    return -1
  end
  local rules = cjson.decode(fields[1])
  for i = from_rule + 1, #rules - 1 do
    local id = cycle_id .. '-' .. i
    if rules[i + 1].cm ~= failed_cm and redis.call('ZSCORE', timer_key(tag, 'timers'), id) then
      local payload = redis.call('HGET', timer_key(tag, 'timer_payload'), id) or ''
      timer_arm(tag, id, now, payload)
      return i
    end
  end
  return -1
end
