-- Whether nothing is left to reach a user with: the cycle is current and not cancelled,
-- no rule of it waits to fire (or to be retried), and every rule's attempt FAILED. Then
-- the user counts as unreachable for the level that paged them.
-- KEYS: cycle, incident cycles, attempts, timer keys (6)
-- ARGV:
--   tag          timer tag
--   cycle        cycle id
-- Returns {1, the Notify idempotency key} when spent, else {0}.
local tag, cycle_id = ARGV[1], ARGV[2]
local cycle = redis.call('HMGET', KEYS[1], 'user', 'n', 'x', 'k')
if not cycle[1] or cycle[3] == '1' or redis.call('HGET', KEYS[2], cycle[1]) ~= cycle_id then
  return {0}
end
for i = 0, tonumber(cycle[2] or '0') - 1 do
  local id = cycle_id .. '-' .. i
  if redis.call('ZSCORE', timer_key(tag, 'timers'), id)
    or redis.call('ZSCORE', timer_key(tag, 'inflight'), id) then
    return {0}
  end
  local raw = redis.call('HGET', KEYS[3], id)
  if raw and cjson.decode(raw).st ~= AttemptStatus.FAILED then
    return {0}
  end
end
return {1, cycle[4] or ''}
