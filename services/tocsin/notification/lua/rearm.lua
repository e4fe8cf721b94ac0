-- Put a claimed timer back, due at a reserved rate-limit slot, if the claim is still ours.
-- KEYS: timer keys (6)
-- ARGV:
--   tag        timer tag
--   id         timer id
--   fence      of the caller's claim
--   due_ms
--   payload    records.TimerPayload
-- Returns 1 or 0.
local held = redis.call('HGET', timer_key(ARGV[1], 'timer_fence'), ARGV[2])
if not held or tonumber(held) ~= tonumber(ARGV[3]) then
  return 0
end
timer_arm(ARGV[1], ARGV[2], tonumber(ARGV[4]), ARGV[5])
return 1
