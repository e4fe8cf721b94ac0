-- Create or replace a schedule, atomically with the user-reference index.
-- Every write stores a new revision from the directory's counter (never reused, even by a
-- schedule deleted and created again): escalation's on-call cache keys on it
-- (tocsin/runtime/oncall.py).
-- KEYS[1] schedule hash, KEYS[2] schedules index (zset), KEYS[3] revision counter,
-- KEYS[4..] user keys it names
-- ARGV:
--   id         schedule id
--   mode       "create" | "update"
--   expected   expected version (update; 0 = any)
--   schedule   the new Schedule protobuf
--   version    the new version
--   prefix     key prefix
--   users...   the user ids (same order as KEYS[4..])
-- Returns {"ok"} | {"exists"} | {"missing"} | {"conflict", version} | {"unknown_users", ...}
local current = redis.call("HGET", KEYS[1], "version")
if ARGV[2] == "create" and current then return {"exists"} end
if ARGV[2] == "update" then
  if not current then return {"missing"} end
  if ARGV[3] ~= "0" and current ~= ARGV[3] then return {"conflict", current} end
end
local unknown = {"unknown_users"}
for i = 4, #KEYS do
  if redis.call("EXISTS", KEYS[i]) == 0 then table.insert(unknown, ARGV[i + 3]) end
end
if #unknown > 1 then return unknown end
local prefix = ARGV[6]
local old_users = redis.call("HGET", KEYS[1], "users")
if old_users then
  for user in string.gmatch(old_users, "[^,]+") do
    redis.call("SREM", prefix .. "user-refs:" .. user, ARGV[1])
  end
end
local names = {}
for i = 7, #ARGV do
  redis.call("SADD", prefix .. "user-refs:" .. ARGV[i], ARGV[1])
  table.insert(names, ARGV[i])
end
local rev = redis.call("INCR", KEYS[3])
redis.call(
  "HSET", KEYS[1], "proto", ARGV[4], "version", ARGV[5], "users", table.concat(names, ","),
  "rev", rev
)
redis.call("ZADD", KEYS[2], 0, ARGV[1])
return {"ok"}
