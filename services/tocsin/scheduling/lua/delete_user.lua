-- Delete a user unless a schedule still names them, and with them every credential they
-- had (personal tokens, API keys), their password and lock-out count, so a user created
-- again under the same id starts with none of them.
-- KEYS[1] user key, KEYS[2] users index, KEYS[3] the user's schedule references,
-- KEYS[4] the user's credential ids, KEYS[5] the API key index, KEYS[6] the password,
-- KEYS[7] the login failures (all in the {sched} slot)
-- ARGV:
--   id           user id
--   cred_prefix  where credentials are kept, e.g. tocsin:{sched}:cred:
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
for _, credential in ipairs(redis.call("ZRANGE", KEYS[4], 0, -1)) do
  redis.call("DEL", ARGV[2] .. credential)
  redis.call("ZREM", KEYS[5], credential)
end
redis.call("DEL", KEYS[4], KEYS[6], KEYS[7])
return {"ok"}
