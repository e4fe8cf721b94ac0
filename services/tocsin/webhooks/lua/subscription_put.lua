-- Store an incident's stakeholder subscription in the incident's subscription hash, which
-- expires with the incident: if the incident's hash already counts down to its retention
-- end (it was resolved), so does the subscription hash; if the incident is gone (expired,
-- or never existed here), the subscription is kept for `retention_ms`. An open incident's
-- hash gets its expiry when the incident resolves (Router, the RESOLVED event).
-- KEYS: 1 the incident's subscription hash, 2 the incident's hash (same hash tag)
-- ARGV:
--   id              subscription id
--   subscription    Subscription protobuf
--   retention_ms    how long resolved incidents are kept (TOCSIN_RETENTION)
-- Returns the ms until the subscription hash expires, or -1 when it does not (yet).
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = redis.call('PTTL', KEYS[2])
if ttl == -2 then
  ttl = tonumber(ARGV[3])
end
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return ttl
end
return -1
