-- Record a notice once: its idempotency key and one SENDING attempt per target, in one
-- step, before any channel is called (so a notice goes out at most once per key, and each
-- send at most once per attempt: a process that dies after this leaves SENDING attempts
-- that the sweep marks UNKNOWN, never resent).
-- KEYS: notice key, attempts hash (the user's), sending index
-- ARGV:
--   keep_ms   how long the notice key is remembered
--   ttl_ms    how long the attempts are kept
--   records   JSON array of records.AttemptRecord (ids set)
-- Returns the stored records (JSON), or false if the key was used before (nothing written).
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return false
end
local stored = {}
for _, rec in ipairs(cjson.decode(ARGV[3])) do
  if attempt_new(KEYS[2], KEYS[3], rec, tonumber(ARGV[2])) then
    stored[#stored + 1] = cjson.encode(rec)
  end
end
return stored
