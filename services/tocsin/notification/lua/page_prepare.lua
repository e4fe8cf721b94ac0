-- Before a page: the user's settings and the reply code for (user, incident).
-- KEYS: user settings, reply codes, code-of, code sequence
-- ARGV: incident id, now ms, code ttl ms, number of codes
-- A code is 1-2 digits, unique among the user's live codes; codes are handed out round
-- robin so a freed code is not reused at once (an old reply must not hit a new incident).
-- When all are live the one expiring first is taken. Returns {settings or false, code}.
local inc, now, ttl, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local settings = redis.call('GET', KEYS[1])
local expires = now + ttl
local code = redis.call('HGET', KEYS[3], inc)
if code then
  local held = redis.call('HGET', KEYS[2], code)
  if held and string.match(held, '^([^|]*)|') == inc then
    redis.call('HSET', KEYS[2], code, inc .. '|' .. expires)
    return {settings, code}
  end
  redis.call('HDEL', KEYS[3], inc)
end
local start = tonumber(redis.call('GET', KEYS[4]) or '0')
local chosen, oldest, oldest_expiry = nil, nil, nil
for k = 1, count do
  local candidate = tostring((start + k - 1) % count + 1)
  local held = redis.call('HGET', KEYS[2], candidate)
  if not held then
    chosen = candidate
    break
  end
  local expiry = tonumber(string.match(held, '|(%d+)$'))
  if expiry <= now then
    chosen = candidate
    break
  end
  if not oldest_expiry or expiry < oldest_expiry then
    oldest, oldest_expiry = candidate, expiry
  end
end
chosen = chosen or oldest
local previous = redis.call('HGET', KEYS[2], chosen)
if previous then
  redis.call('HDEL', KEYS[3], string.match(previous, '^([^|]*)|'))
end
redis.call('HSET', KEYS[2], chosen, inc .. '|' .. expires)
redis.call('HSET', KEYS[3], inc, chosen)
redis.call('SET', KEYS[4], chosen)
return {settings, chosen}
