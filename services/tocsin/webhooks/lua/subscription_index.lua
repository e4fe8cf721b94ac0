-- The subscription index: where each stakeholder subscription is kept, by id, so that
-- Unsubscribe, the deliverer and ListSubscriptions find it without scanning. Entries of
-- incident subscriptions whose incident resolved carry a deadline (the end of its
-- retention, when their hash expires) and are pruned here, a few per call, once it passed.
-- KEYS: 1 index hash (id -> location), 2 deadlines (sorted set, id scored by ms)
-- ARGV:
--   now_ms
--   id            '' = only prune
--   location      's:<service>' or 'i:<incident>'; '' = remove the entry
--   deadline_ms   when the entry lapses; '0' = never (or not yet known)
-- Returns the entry's previous location, or false.
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, id in ipairs(lapsed) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
if ARGV[2] == '' then
  return false
end
local previous = redis.call('HGET', KEYS[1], ARGV[2])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return previous
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if ARGV[4] ~= '0' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
else
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return previous
