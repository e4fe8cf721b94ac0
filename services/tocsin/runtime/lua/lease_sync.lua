-- Take or renew the leases of the desired shards and give up every other lease held.
-- KEYS[1] owners hash (shard -> "owner|deadline_ms")
-- ARGV:
--   owner
--   now_ms
--   lease_ms
--   gc_ms       the hash expires this long after the last sync
--   shards      shard count
--   desired...  the shards to take or renew
-- A lease is free when absent or when its deadline is not after now. Returns owned shards.
local owner, now = ARGV[1], tonumber(ARGV[2])
local value = owner .. '|' .. (now + tonumber(ARGV[3]))
local desired = {}
for i = 6, #ARGV do
  desired[ARGV[i]] = true
end
local owned = {}
for shard = 0, tonumber(ARGV[5]) - 1 do
  local field = tostring(shard)
  local current = redis.call('HGET', KEYS[1], field)
  local holder, deadline = nil, nil
  if current then
    holder, deadline = string.match(current, '^(.*)|(%d+)$')
  end
  local free = (not current) or (not deadline) or tonumber(deadline) <= now
  if desired[field] then
    if free or holder == owner then
      redis.call('HSET', KEYS[1], field, value)
      owned[#owned + 1] = shard
    end
  elseif holder == owner then
    redis.call('HDEL', KEYS[1], field)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return owned
