-- Before a page: the user's settings and the reply code for (user, incident).
-- KEYS: user settings, reply codes, code-of
-- ARGV:
--   incident_id    the incident the page is about
--   now_ms         the caller's clock
--   window_ms      how long after the latest page a reply may act
--   quarantine_ms  how long after that the code names nothing
--   margin_ms      how long a key outlives the last code it holds
--   tier_prefix    prefix of the per-tier keys (same hash tag as KEYS)
-- A code names one incident from its first page until `quarantine` after its answer window
-- (`window` after that incident's latest page to the user) has passed: replies inside the
-- window act, later ones are refused, and only then may the code name another incident.
-- Codes come in tiers, 1-99, then 100-999, 1000-9999, ...: the first tier with a code never
-- handed out or free again gives it, so an alert storm gets longer codes, never a code
-- still in use. Each tier is a sorted set, `<prefix><tier>`: code -> when it is free again.
-- Codes of a tier are handed out in order (its members are always low .. low + ZCARD - 1),
-- then the one free the longest is reused. Every key expires `margin` after the last code
-- it holds is free (a relative TTL: "now" is the injected clock's, Redis expires by its
-- own), so a user paged no more leaves nothing behind. The tier keys are named here, like
-- the incident keys of incidents' trigger.lua: the tier is known only here.
-- Returns {settings or false, code}.
local inc, now, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local quarantine, margin, prefix = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local settings = redis.call('GET', KEYS[1])
local expires = now + window
local free_at = expires + quarantine
local ttl = window + quarantine + margin

local function tier_of(code)
  return math.max(1, #code - 1)
end

local function hold(code)
  local tier_key = prefix .. tier_of(code)
  redis.call('ZADD', tier_key, free_at, code)
  redis.call('HSET', KEYS[2], code, inc .. '|' .. expires)
  redis.call('HSET', KEYS[3], inc, code)
  for _, key in ipairs({tier_key, KEYS[2], KEYS[3]}) do
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Codes held before the tiers existed (1-99, handed out round robin) join tier 1 with
-- when they are free; the tier's other codes join as free long ago.
local first_tier = prefix .. 1
if redis.call('EXISTS', first_tier) == 0 and redis.call('HLEN', KEYS[2]) > 0 then
  for c = 1, 99 do
    local held = redis.call('HGET', KEYS[2], tostring(c))
    local free = c - 100  -- free long ago, in code order
    if held then
      free = tonumber(string.match(held, '|(%d+)$')) + quarantine
    end
    redis.call('ZADD', first_tier, free, tostring(c))
  end
  redis.call('PEXPIRE', first_tier, ttl)
end

local code = redis.call('HGET', KEYS[3], inc)
if code then
  local held = redis.call('HGET', KEYS[2], code)
  if held and string.match(held, '^([^|]*)|') == inc
      and tonumber(string.match(held, '|(%d+)$')) + quarantine > now then
    hold(code)
    return {settings, code}
  end
  redis.call('HDEL', KEYS[3], inc)
end

local chosen = nil
local tier, low, size = 1, 1, 99
while not chosen do
  local tier_key = prefix .. tier
  local used = redis.call('ZCARD', tier_key)
  if used < size then
    chosen = tostring(low + used)
  else
    local oldest = redis.call('ZRANGEBYSCORE', tier_key, '-inf', now, 'LIMIT', 0, 1)
    chosen = oldest[1]
  end
  tier, low, size = tier + 1, low + size, (low + size) * 9
end
local previous = redis.call('HGET', KEYS[2], chosen)
if previous then
  local owner = string.match(previous, '^([^|]*)|')
  if redis.call('HGET', KEYS[3], owner) == chosen then
    redis.call('HDEL', KEYS[3], owner)
  end
end
hold(chosen)
return {settings, chosen}
