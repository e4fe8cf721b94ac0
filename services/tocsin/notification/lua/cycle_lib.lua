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

-- A rule's timer fired: decide whether the claim holding `a.fence` may send, and if so
-- record the attempt SENDING and complete the timer, all in the caller's one script (the
-- body of fire.lua; notify.lua runs it too for the rules it sends at once). Nothing is
-- sent twice for one rule of one cycle: a second firing finds the attempt (or a stale
-- fence). `k`: {incident state, incident cycles, cycle, attempts, sending index} keys;
-- `a`: tag, id (timer id = attempt id), fence, rule, method, channel, now, ttl, mode,
-- detail, provider, as fire.lua's ARGV say. Returns what fire.lua returns.
local function cycle_fire(k, a)
  local tag, id, fence, now, mode = a.tag, a.id, a.fence, a.now, a.mode
  local held = redis.call('HGET', timer_key(tag, 'timer_fence'), id)
  if not held or tonumber(held) ~= tonumber(fence) then
    return {'stale'}
  end
  local cycle_id = string.match(id, '^(.*)%-%d+$')
  local cycle = redis.call('HMGET', k[3], 'inc', 'user', 'x', 'code')
  local outcome = nil
  if not cycle[1] then
    outcome = 'gone'
  elseif cycle[3] == '1' then
    outcome = 'cancelled'
  elseif redis.call('HGET', k[2], cycle[2]) ~= cycle_id then
    outcome = 'superseded'
  elseif redis.call('HEXISTS', k[4], id) == 1 then
    outcome = 'duplicate'
  end
  if outcome then
    timer_complete(tag, id, fence)
    return {outcome}
  end
  local state = redis.call('HMGET', k[1], 'st', 'sum', 'svc', 'nr', 'ca')
  if mode == 'mirrored' then
    if not state[2] or state[2] == '' then
      return {'unmirrored'}
    end
    mode = 'mirror'
  end
  if mode == 'mirror' and state[1] and tonumber(state[1]) ~= INCIDENT_TRIGGERED then
    return {'check'}
  end
  local status = ATTEMPT_SENDING
  if mode == 'skip' then
    status = AttemptStatus.SKIPPED
  elseif mode == 'unreachable' then
    status = AttemptStatus.FAILED
  end
  local rule = tonumber(a.rule)
  local rec = {id = id, inc = cycle[1], user = cycle[2], cm = a.method, type = tonumber(a.channel),
    rule = rule, st = status, code = cycle[4], c = now, u = now}
  if mode == 'unreachable' then
    rec.pst = a.detail
  elseif mode ~= 'skip' and a.provider ~= '' then
    rec.prov = a.provider
  end
  attempt_new(k[4], k[5], rec, a.ttl)
  timer_complete(tag, id, fence)
  if mode == 'unreachable' then
    return {'unreachable', cycle_advance(k[3], tag, cycle_id, rule, a.method, now)}
  elseif mode == 'skip' then
    return {'skip'}
  end
  return {'send', cycle[4], state[2] or '', state[3] or '', cycle[1], cycle[2], state[4] or '',
    state[5] or ''}
end
