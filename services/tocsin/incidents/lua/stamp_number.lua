-- Give an incident opened before numbers its number (store.number_existing), unless it
-- has one: appended to its protobuf `p` (a later field wins when decoded) and its state
-- version moved, so a writer that read it before fails its compare-and-set and re-reads.
-- KEYS: 1 incident hash, 2 the shard's number index
-- ARGV:
--   id
--   number
-- Returns 1 if numbered, 0 if it was already or no longer exists.
local ik = KEYS[1]
local f = redis.call('HMGET', ik, 'sv', 'nr')
if not f[1] or f[2] then
  return 0
end
local p = redis.call('HGET', ik, 'p') .. PB_KEY.Incident.number .. pb_varint(ARGV[2])
redis.call('HSET', ik, 'p', p, 'sv', tonumber(f[1]) + 1, 'nr', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
