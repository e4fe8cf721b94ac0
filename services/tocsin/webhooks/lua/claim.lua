-- Claim up to `limit` incident queues of one subscription whose head is due: each is
-- moved to `now + lease` in the due set, so no other deliverer takes it meanwhile (one
-- delivery per incident at a time keeps the incident's order). A deliverer that dies
-- leaves its claims to come due again when the lease ends. Completion checks the head it
-- delivered (complete.lua), so a lease held twice after a long pause can only send an
-- event twice (receivers de-duplicate by event id), never lose or reorder one.
-- KEYS: 1 the subscription's due set
-- ARGV:
--   now_ms
--   lease_ms
--   limit
-- Returns the claimed incident ids.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, incident in ipairs(due) do
  redis.call('ZADD', KEYS[1], until_ms, incident)
end
return due
