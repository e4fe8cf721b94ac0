-- Take incident numbers from the stack's one counter (keys.NUMBER_SEQUENCE), which is in a
-- slot of its own: the trigger script cannot touch it on a Cluster, so the store takes a
-- number here first and hands it to trigger.lua (see keys.py, "Numbers").
-- KEYS: 1 the number counter
-- ARGV:
--   floor   the counter is first raised to at least this ('0' = leave it), so it never
--           hands out a number a shard already has after it went back
--   count   how many numbers to take
-- Returns the last number taken (the first is that minus count plus one).
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if floor > current then
  redis.call('SET', KEYS[1], string.format('%.0f', floor))
end
return redis.call('INCRBY', KEYS[1], ARGV[2])
