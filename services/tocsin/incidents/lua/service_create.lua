-- Create a service. KEYS: 1 by-id hash, 2 by-key hash
-- ARGV:
--   id
--   key        integration key
--   service    Service protobuf
-- Returns 'ok', or 'id' / 'key' when that is taken.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 'id'
end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return 'key'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 'ok'
