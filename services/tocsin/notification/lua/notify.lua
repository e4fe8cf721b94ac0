-- Start (or replace) the notification cycle of one user for one incident.
-- KEYS: idempotency key, incident state, incident cycles, timer keys (6)
-- ARGV:
--   tag          timer tag
--   prefix       key prefix
--   incident     incident id
--   user         user id
--   now_ms
--   ttl_ms       how long the cycle is kept
--   traceparent
--   reply_code
--   rules        JSON, records.encode_rules ([{cm, d, t}], ordered by delay)
--   lease_ms     of the claims on the rules due now
--   key          the Notify idempotency key (kept as the cycle's k: see cycle_spent.lua)
--   level_due_ms when the page stops mattering, 0 if not known (the cycle's lv)
-- Returns {0} when the idempotency key was seen, else {1, cycle id, rules, cancelled,
-- claims}: cancelled counts the timers of a replaced cycle; claims are the timers of the
-- rules due now, already claimed for the caller (timer_claim, as TimerStore.claim does)
-- so it sends them at once and no worker races it for them. Should the caller die before
-- sending, their leases run out and a worker fires them.
local tag, prefix, inc, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ttl) then
  return {0}
end
local cancelled = 0
local previous = redis.call('HGET', KEYS[3], user)
if previous then
  cancelled = cycle_cancel(prefix .. 'cycle:' .. previous, tag, previous)
end
local cycle_id = inc .. '-' .. redis.call('HINCRBY', KEYS[2], 'seq', 1)
local cycle_key = prefix .. 'cycle:' .. cycle_id
local rules = cjson.decode(ARGV[9])
redis.call('HSET', cycle_key, 'inc', inc, 'user', user, 'tp', ARGV[7], 'code', ARGV[8],
  'rules', ARGV[9], 'n', #rules, 'c', now, 'k', ARGV[11], 'lv', ARGV[12])
redis.call('HSET', KEYS[3], user, cycle_id)
for _, key in ipairs({cycle_key, KEYS[2], KEYS[3]}) do
  redis.call('PEXPIRE', key, ttl)
end
local claims = {}
for i, rule in ipairs(rules) do
  local id = cycle_id .. '-' .. (i - 1)
  local payload = cjson.encode({c = cycle_id, r = i - 1, u = user, cm = rule.cm, t = rule.t,
    tp = ARGV[7]})
  timer_arm(tag, id, now + rule.d, payload)
  if rule.d == 0 then
    claims[#claims + 1] = timer_claim(tag, id, now, ARGV[10])
  end
end
return {1, cycle_id, #rules, cancelled, claims}
