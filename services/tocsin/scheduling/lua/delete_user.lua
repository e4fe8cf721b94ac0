-- Delete a user unless a schedule still names them.
-- KEYS[1] user key, KEYS[2] users index, KEYS[3] the user's schedule references
-- ARGV:
--   id       user id
-- Returns {"ok"} | {"missing"} | {"referenced", schedule ids...}
if redis.call("EXISTS", KEYS[1]) == 0 then return {"missing"} end
local refs = redis.call("SMEMBERS", KEYS[3])
if #refs > 0 then
  table.sort(refs)
  table.insert(refs, 1, "referenced")
  return refs
end
redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[2], ARGV[1])
return {"ok"}
