-- Mark attempts that have been SENDING since before `older_than` as UNKNOWN: the process
-- sending them died between recording SENDING and hearing Twilio's answer. They are never
-- resent (Twilio may well have sent them).
-- KEYS: sending index
-- ARGV:
--   older_than_ms
--   now_ms
--   limit
-- Returns the records marked UNKNOWN (JSON). Attempts hashes named in members share the
-- index's hash tag.
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local marked = {}
for _, member in ipairs(members) do
  redis.call('ZREM', KEYS[1], member)
  local attempts_key, id = string.match(member, '^(.*)|([^|]*)$')
  local raw = attempts_key and redis.call('HGET', attempts_key, id)
  if raw then
    local rec = cjson.decode(raw)
    if rec.st == ATTEMPT_SENDING then
      rec.st = ATTEMPT_UNKNOWN
      rec.u = tonumber(ARGV[2])
      redis.call('HSET', attempts_key, id, cjson.encode(rec))
      marked[#marked + 1] = cjson.encode(rec)
    end
  end
end
return marked
