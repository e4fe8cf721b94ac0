-- Delete a schedule and its user references.
-- KEYS[1] schedule hash, KEYS[2] schedules index
-- ARGV:
--   id       schedule id
--   prefix   key prefix
-- Returns 1 if deleted, 0 if it did not exist.
local users = redis.call("HGET", KEYS[1], "users")
if not users and redis.call("EXISTS", KEYS[1]) == 0 then return 0 end
for user in string.gmatch(users or "", "[^,]+") do
  redis.call("SREM", ARGV[2] .. "user-refs:" .. user, ARGV[1])
end
redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[2], ARGV[1])
return 1
