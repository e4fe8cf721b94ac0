-- Give up every lease of an owner and leave the group.
-- KEYS[1] members zset, KEYS[2] owners hash
-- ARGV:
--   owner
--   shards     shard count
for shard = 0, tonumber(ARGV[2]) - 1 do
  local current = redis.call('HGET', KEYS[2], tostring(shard))
  if current and string.match(current, '^(.*)|%d+$') == ARGV[1] then
    redis.call('HDEL', KEYS[2], tostring(shard))
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
