-- Queue one event for one subscription, in its incident's queue, unless the incident's
-- queue has seen this event (or a later one of the same stream) before: the stream
-- consumer may hand an entry over again after a crash, and it must be queued once.
-- Stream entry ids of one incident grow (an incident keeps its stream), so "seen" is
-- "not after the last id queued", kept in the queue's meta hash for `keep_s`.
-- KEYS: 1 the subscription's due set, 2 the incident's queue, 3 the incident's meta hash
-- ARGV:
--   incident    incident id (the due set's member)
--   stream_id   the event's stream entry id ("1700000000000-0")
--   item        the queued delivery (JSON: event id, type, body)
--   now_ms      when it is due (at once, unless the queue's head is waiting for a retry)
--   keep_s      how long the meta hash outlives the queue's last enqueue
-- Returns 1 queued, 0 seen before.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local last = redis.call('HGET', KEYS[3], 'last')
if last then
  local ms, seq = parse(ARGV[2])
  local lms, lseq = parse(last)
  if ms < lms or (ms == lms and seq <= lseq) then
    return 0
  end
end
redis.call('HSET', KEYS[3], 'last', ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
end
return 1
