-- A service by id (ARGV[1]) or, when that is empty, by integration key (ARGV[2]).
-- KEYS: 1 by-id hash, 2 by-key hash. Returns the Service protobuf or nil.
local id = ARGV[1]
if id == '' then
  id = redis.call('HGET', KEYS[2], ARGV[2])
  if not id then
    return false
  end
end
return redis.call('HGET', KEYS[1], id)
