-- Start (or replace) the notification cycle of one user for one incident.
-- KEYS: idempotency key, incident state, incident cycles, attempts, sending index,
-- timer keys (6); with `settings_digest` (one Redis server only: other slots) also the
-- user's settings, code-of and reply codes (contacts' keys, as page_prepare.lua's)
-- ARGV:
--   tag          timer tag
--   prefix       key prefix
--   incident     incident id
--   user         user id
--   now_ms
--   ttl_ms       how long the cycle is kept
--   traceparent
--   reply_code   the user's code for the incident; '' = the one page_prepare.lua held for
--                it just before, at this now_ms, in the same pipeline (with a digest)
--   rules        JSON, records.encode_rules ([{cm, d, t}], ordered by delay)
--   lease_ms     of the claims on the rules due now
--   key          the Notify idempotency key (kept as the cycle's k: see cycle_spent.lua)
--   level_due_ms when the page stops mattering, 0 if not known (the cycle's lv)
--   send_now     '' or JSON {"<rule index>": {"cm": contact method, "m": mode,
--                "ch": channel, "p": provider}}: rules due now the caller is ready to
--                send at once (its send slot held, everything the page needs at hand);
--                each, if its rule still names that contact method, is fired here as
--                fire.lua would with that mode, channel and provider (cycle_fire)
--   settings_digest  '' or the SHA-1 of the user's settings the rules were taken from (a
--                process's copy): the cycle starts only if the stored ones still have it
--   window_ms    how long a reply code is answered after a page (page_prepare.lua's)
-- Returns {-1} when the settings are not those of `settings_digest`, {-2} when no code
-- was held for the incident at this now_ms (page_prepare.lua did not run first): nothing
-- is written then, the caller starts the cycle again the usual way; {0} when the idempotency key was seen, else {1, cycle id, rules, cancelled,
-- claims, fired}: cancelled counts the timers of a replaced cycle; claims are the timers
-- of the rules due now, already claimed for the caller (timer_claim, as TimerStore.claim
-- does) so it sends them at once and no worker races it for them; fired[i] is what
-- cycle_fire answered for claims[i] (its attempt recorded SENDING when 'send'), or
-- {'claimed'} when it was not fired here: the caller fires it (fire.lua). Should the
-- caller die before sending, a claim's lease runs out and a worker fires it; an attempt
-- recorded SENDING is never sent again (the sweep marks it UNKNOWN).
local tag, prefix, inc, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local code = ARGV[8]
if ARGV[14] ~= '' then
  if redis.sha1hex(redis.call('GET', KEYS[12]) or '') ~= ARGV[14] then
    return {-1}
  end
  if code == '' then
    code = redis.call('HGET', KEYS[13], inc)
    local held_until = inc .. '|' .. (now + tonumber(ARGV[15]))
    if not code or redis.call('HGET', KEYS[14], code) ~= held_until then
      return {-2}
    end
  end
end
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
redis.call('HSET', cycle_key, 'inc', inc, 'user', user, 'tp', ARGV[7], 'code', code,
  'rules', ARGV[9], 'n', #rules, 'c', now, 'k', ARGV[11], 'lv', ARGV[12])
redis.call('HSET', KEYS[3], user, cycle_id)
for _, key in ipairs({cycle_key, KEYS[2], KEYS[3]}) do
  redis.call('PEXPIRE', key, ttl)
end
local send_now = {}
if ARGV[13] ~= '' then
  send_now = cjson.decode(ARGV[13])
end
local fire_keys = {KEYS[2], KEYS[3], cycle_key, KEYS[4], KEYS[5]}
local claims, fired = {}, {}
for i, rule in ipairs(rules) do
  local id = cycle_id .. '-' .. (i - 1)
  local fields = {c = cycle_id, r = i - 1, u = user, cm = rule.cm, t = rule.t, tp = ARGV[7]}
  if i == 1 then  -- the first rule reports its page out, to the level waiting for it
    fields.k = (tonumber(ARGV[12]) ~= 0) and ARGV[11] or ''
  end
  local payload = cjson.encode(fields)
  timer_arm(tag, id, now + rule.d, payload)
  if rule.d == 0 then
    local claim = timer_claim(tag, id, now, ARGV[10])
    claims[#claims + 1] = claim
    local send = send_now[tostring(i - 1)]
    if send and send.cm == rule.cm then
      fired[#fired + 1] = cycle_fire(fire_keys, {tag = tag, id = id, fence = claim[4],
        rule = i - 1, method = rule.cm, channel = send.ch, now = now, ttl = ttl,
        mode = send.m, detail = '', provider = send.p})
    else
      fired[#fired + 1] = {'claimed'}
    end
  end
end
return {1, cycle_id, #rules, cancelled, claims, fired}
