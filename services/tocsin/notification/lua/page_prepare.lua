-- Before a page: the user's settings and the reply code for (user, incident).
-- KEYS: user settings, reply codes, code-of, code sequence
-- ARGV: incident id, now ms, answer window ms, quarantine ms, codes in the first tier (99)
-- A code names one incident from its first page until `quarantine` after its answer window
-- (`window` after that incident's latest page to the user) has passed: replies inside the
-- window act, later ones are refused, and only then may the code name another incident.
-- Codes come from the smallest tier with one free: 1-99 (round robin, so a freed code is
-- not the next one handed out), then 100-999, 1000-9999, ... so an alert storm gets longer
-- codes, never a code still in use. Both hashes expire once every code in them is free.
-- Returns {settings or false, code}.
local inc, now, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local quarantine, first_tier = tonumber(ARGV[4]), tonumber(ARGV[5])
local settings = redis.call('GET', KEYS[1])
local expires = now + window

local function keep_until()
  -- This entry is the one freed last: nothing in the hashes needs to outlive it. (A
  -- relative TTL: "now" is the injected clock's, Redis expires by its own.)
  redis.call('PEXPIRE', KEYS[2], window + quarantine)
  redis.call('PEXPIRE', KEYS[3], window + quarantine)
end

local code = redis.call('HGET', KEYS[3], inc)
if code then
  local held = redis.call('HGET', KEYS[2], code)
  if held and string.match(held, '^([^|]*)|') == inc then
    redis.call('HSET', KEYS[2], code, inc .. '|' .. expires)
    keep_until()
    return {settings, code}
  end
  redis.call('HDEL', KEYS[3], inc)
end

local function is_free(candidate)
  local held = redis.call('HGET', KEYS[2], candidate)
  if not held then
    return true
  end
  return tonumber(string.match(held, '|(%d+)$')) + quarantine <= now
end

local last = tonumber(redis.call('GET', KEYS[4]) or '0')
local chosen = nil
local low, high = 1, first_tier
while not chosen do
  local size = high - low + 1
  local offset = 0
  if last >= low and last <= high then
    offset = last - low + 1
  end
  for k = 0, size - 1 do
    local candidate = tostring(low + (offset + k) % size)
    if is_free(candidate) then
      chosen = candidate
      break
    end
  end
  low, high = high + 1, high * 10 + 9
end
local previous = redis.call('HGET', KEYS[2], chosen)
if previous then
  local owner = string.match(previous, '^([^|]*)|')
  if redis.call('HGET', KEYS[3], owner) == chosen then
    redis.call('HDEL', KEYS[3], owner)
  end
end
redis.call('HSET', KEYS[2], chosen, inc .. '|' .. expires)
redis.call('HSET', KEYS[3], inc, chosen)
redis.call('SET', KEYS[4], chosen, 'PX', window + quarantine)
keep_until()
return {settings, chosen}
