-- Hand a SENDING attempt to the next phone provider, at most once per provider: only if
-- the attempt is still SENDING through `from_provider` (its provider refused the request without
-- processing it) and `to_provider` was never handed it. The record names the new provider before
-- it is called, so a process that dies during that call leaves an attempt the sweep marks
-- UNKNOWN, and no process ever sends it through `to_provider` (or `from_provider`) again.
-- KEYS: attempts hash, sending index
-- ARGV:
--   id              attempt id
--   from_provider   the provider that refused
--   to_provider     the next provider
--   now_ms
-- Returns 1 if the attempt now goes through `to_provider`, else 0.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local rec = cjson.decode(raw)
if rec.st ~= ATTEMPT_SENDING then
  return 0
end
local tried = rec.prov or ''
local current = string.match(tried, '([^,]*)$')
if current ~= ARGV[2] then
  return 0
end
for name in string.gmatch(tried, '[^,]+') do
  if name == ARGV[3] then
    return 0
  end
end
rec.prov = tried .. ',' .. ARGV[3]
rec.u = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
-- The sweep counts from the start of this send (it must not mark a live call UNKNOWN).
redis.call('ZADD', KEYS[2], rec.u, attempt_member(KEYS[1], ARGV[1]))
return 1
