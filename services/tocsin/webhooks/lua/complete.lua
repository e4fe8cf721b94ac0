-- Record the outcome of delivering the head of an incident's queue, if it is still the
-- head (another deliverer may have completed it after this one's lease ended).
-- 'done' (delivered, or given up): the head is removed, and the queue is due again at
-- once if it holds more, else it leaves the due set. 'retry': the head stays, its attempt
-- count grows and the queue is due at `next_ms`. Either way the attempt is logged
-- (newest first, at most `log_max`).
-- KEYS: 1 due set, 2 the incident's queue, 3 the incident's meta hash, 4 delivery log
-- ARGV:
--   incident
--   item        the head that was delivered
--   outcome     'done' or 'retry'
--   now_ms
--   next_ms     when to try again ('retry')
--   record      the delivery log entry (Delivery protobuf)
--   log_max
--   keep_s
-- Returns 1 recorded, 0 the head had changed (nothing written).
local head = redis.call('LINDEX', KEYS[2], 0)
if head ~= ARGV[2] then
  if not head then
    redis.call('ZREM', KEYS[1], ARGV[1])
  end
  return 0
end
if ARGV[3] == 'done' then
  redis.call('LPOP', KEYS[2])
  redis.call('HDEL', KEYS[3], 'attempts', 'first_ms')
  if redis.call('LLEN', KEYS[2]) > 0 then
    redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  else
    redis.call('ZREM', KEYS[1], ARGV[1])
  end
else
  redis.call('HINCRBY', KEYS[3], 'attempts', 1)
  redis.call('HSETNX', KEYS[3], 'first_ms', ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
end
redis.call('LPUSH', KEYS[4], ARGV[6])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[7]) - 1)
return 1
