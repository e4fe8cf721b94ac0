-- Record what became known about an attempt (send result, status callback).
-- KEYS: attempts hash, sending index
-- ARGV:
--   id                 attempt id
--   status             AttemptStatus (0 = none)
--   provider_id        ('' = none)
--   error_code         (0 = none)
--   provider_status    ('' = none)
--   now_ms
-- Returns {record JSON, status changed (0/1)}, or false if there is no such attempt.
local rec, changed = attempt_update(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), ARGV[3],
  tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]))
if not rec then
  return false
end
return {cjson.encode(rec), changed and 1 or 0}
