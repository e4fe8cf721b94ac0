-- Append a timeline entry written by another service, at most once per idempotency key.
-- KEYS: 1 incident hash, 2 timeline, 3 idempotency key (optional)
-- ARGV:
--   entry    TimelineEntry protobuf
--   ttl_s    idempotency key TTL
-- Returns 1 appended, 0 key seen before, -1 no such incident.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if KEYS[3] and not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[2]) then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
