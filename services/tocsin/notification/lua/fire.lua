-- A rule's timer fired: decide, atomically, whether this claim may send, and if so record
-- the attempt as SENDING and complete the timer in the same step. Nothing is sent twice
-- for one rule of one cycle: a second firing finds the attempt (or a stale fence).
-- KEYS: incident state, incident cycles, cycle, attempts, sending index, timer keys (6)
-- ARGV:
--   tag        timer tag
--   id         timer id (= attempt id)
--   fence      of the caller's claim
--   rule       rule index
--   method     contact method id
--   channel    ContactMethodType
--   now_ms
--   ttl_ms     how long the attempt is kept
--   mode       see below
--   detail     why, for 'unreachable'
--   provider   the phone provider the send goes through ('' for other channels): named in
--              the SENDING record, so nothing ever sends this attempt through it again
-- mode: 'mirror'  send unless the status mirror says the incident is not triggered, in
--                 which case answer 'check' (the caller asks the incidents service)
--       'mirrored'  as 'mirror', but answer 'unmirrored' and write nothing when the mirror
--                 does not hold the incident's summary yet: the caller read nothing before
--                 (the page's words come back from here) and must look them up first
--       'send'    send (the incidents service just said it is triggered, or is unreachable)
--       'skip'    record SKIPPED (the incidents service says it is not triggered)
--       'unreachable'  record FAILED with `detail` (contact method deleted or disabled)
--                 and move on to the next rule at once
-- Returns {outcome, ...}: {'send', reply code, summary, service id, incident, user,
-- incident number, incident created ms} (the last four from the status mirror, '' when it
-- does not hold them), {'unreachable', next rule index}, or one of 'stale', 'gone',
-- 'cancelled', 'superseded', 'duplicate', 'check', 'skip', 'unmirrored'.
local tag, id, fence = ARGV[1], ARGV[2], ARGV[3]
local now, ttl, mode = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local held = redis.call('HGET', timer_key(tag, 'timer_fence'), id)
if not held or tonumber(held) ~= tonumber(fence) then
  return {'stale'}
end
local cycle_id = string.match(id, '^(.*)%-%d+$')
local cycle = redis.call('HMGET', KEYS[3], 'inc', 'user', 'x', 'code')
local outcome = nil
if not cycle[1] then
  outcome = 'gone'
elseif cycle[3] == '1' then
  outcome = 'cancelled'
elseif redis.call('HGET', KEYS[2], cycle[2]) ~= cycle_id then
  outcome = 'superseded'
elseif redis.call('HEXISTS', KEYS[4], id) == 1 then
  outcome = 'duplicate'
end
if outcome then
  timer_complete(tag, id, fence)
  return {outcome}
end
local state = redis.call('HMGET', KEYS[1], 'st', 'sum', 'svc', 'nr', 'ca')
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
local rule = tonumber(ARGV[4])
local rec = {id = id, inc = cycle[1], user = cycle[2], cm = ARGV[5], type = tonumber(ARGV[6]),
  rule = rule, st = status, code = cycle[4], c = now, u = now}
if mode == 'unreachable' then
  rec.pst = ARGV[10]
elseif mode ~= 'skip' and ARGV[11] ~= '' then
  rec.prov = ARGV[11]
end
attempt_new(KEYS[4], KEYS[5], rec, ttl)
timer_complete(tag, id, fence)
if mode == 'unreachable' then
  return {'unreachable', cycle_advance(KEYS[3], tag, cycle_id, rule, ARGV[5], now)}
elseif mode == 'skip' then
  return {'skip'}
end
return {'send', cycle[4], state[2] or '', state[3] or '', cycle[1], cycle[2], state[4] or '',
  state[5] or ''}
