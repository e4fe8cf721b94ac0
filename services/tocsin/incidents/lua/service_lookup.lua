-- A service by id or, when that is empty, by integration key.
-- KEYS: 1 by-id hash, 2 by-key hash
-- ARGV:
--   id
--   key        integration key
-- Returns the Service protobuf or nil.
local id = ARGV[1]
if id == '' then
  id = redis.call('HGET', KEYS[2], ARGV[2])
  if not id then
    return false
  end
end
return redis.call('HGET', KEYS[1], id)
