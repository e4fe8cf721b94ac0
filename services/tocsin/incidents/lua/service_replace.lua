-- Replace or delete a service the caller read as `read` (compare-and-set).
-- KEYS: 1 by-id hash, 2 by-key hash
-- ARGV:
--   id
--   read       the Service protobuf as read
--   key        its integration key
--   service    the new Service protobuf ('' = delete)
--   new_key    the new integration key
-- Returns 'ok', 'missing', 'conflict' (changed since read) or 'key' (new key taken).
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  return 'missing'
end
if current ~= ARGV[2] then
  return 'conflict'
end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[3])
  return 'ok'
end
if ARGV[5] ~= ARGV[3] then
  if redis.call('HEXISTS', KEYS[2], ARGV[5]) == 1 then
    return 'key'
  end
  redis.call('HDEL', KEYS[2], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 'ok'
