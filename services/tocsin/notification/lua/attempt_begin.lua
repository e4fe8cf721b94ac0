-- Record a test page's attempt as SENDING under its user.
-- KEYS: attempts hash, sending index
-- ARGV:
--   id_prefix
--   record       records.AttemptRecord (its id is set here)
--   ttl_ms
-- Returns the record JSON with its id.
local rec = cjson.decode(ARGV[2])
rec.id = ARGV[1] .. (redis.call('HLEN', KEYS[1]) + 1)
attempt_new(KEYS[1], KEYS[2], rec, tonumber(ARGV[3]))
return cjson.encode(rec)
