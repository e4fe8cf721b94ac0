-- Send attempts: a library of local functions that scripts prepend (after
-- proto_constants and timer_lib).
--
-- An attempt is a JSON record in a hash (attempt id -> record) with the fields
--   id, inc (incident, '' for a test page), user, cm (contact method), type
--   (ContactMethodType), rule (-1 for a test page), st (AttemptStatus), pid (provider
--   id), err (provider error code), pst (provider status word), code (reply code),
--   c / u (created / updated, ms), n (position in its hash, for ordering).
-- While an attempt is SENDING it is also in a sending index, a zset scored by the time the
-- send started, member "<attempts key>|<attempt id>", so a sweep finds the attempts a dead
-- process left behind and marks them UNKNOWN (never resending them).

local ATTEMPT_SENDING = AttemptStatus.SENDING
local ATTEMPT_UNKNOWN = AttemptStatus.UNKNOWN
-- Status only moves forward: SENDING, then SENT or UNKNOWN, then DELIVERED, FAILED or
-- SKIPPED. Callbacks arrive in any order; a late "sent" must not undo "delivered".
local ATTEMPT_RANK = {
  [AttemptStatus.SENDING] = 0,
  [AttemptStatus.SENT] = 1,
  [AttemptStatus.UNKNOWN] = 1,
  [AttemptStatus.DELIVERED] = 2,
  [AttemptStatus.FAILED] = 2,
  [AttemptStatus.SKIPPED] = 2,
}

local function attempt_member(attempts_key, id)
  return attempts_key .. '|' .. id
end

-- Store a new attempt record `rec` (a table). Returns false if one with its id exists.
local function attempt_new(attempts_key, sending_key, rec, ttl_ms)
  if redis.call('HEXISTS', attempts_key, rec.id) == 1 then
    return false
  end
  rec.n = redis.call('HLEN', attempts_key) + 1
  redis.call('HSET', attempts_key, rec.id, cjson.encode(rec))
  redis.call('PEXPIRE', attempts_key, ttl_ms)
  if rec.st == ATTEMPT_SENDING then
    redis.call('ZADD', sending_key, rec.c, attempt_member(attempts_key, rec.id))
  end
  return true
end

-- Apply what became known about attempt `id`: a status (0 = none), provider id (kept once
-- set), error code (0 = none), provider status word ('' = none). Returns the record (or
-- false if there is none) and whether the status changed.
local function attempt_update(attempts_key, sending_key, id, st, pid, err, pst, now)
  local raw = redis.call('HGET', attempts_key, id)
  if not raw then
    return false, false
  end
  local rec = cjson.decode(raw)
  local changed = false
  if st > 0 and st ~= rec.st and ATTEMPT_RANK[st] >= ATTEMPT_RANK[rec.st] then
    rec.st = st
    changed = true
  end
  if pid ~= '' and (rec.pid == nil or rec.pid == '') then
    rec.pid = pid
  end
  if err > 0 then
    rec.err = err
  end
  if pst ~= '' then
    rec.pst = pst
  end
  rec.u = now
  redis.call('HSET', attempts_key, id, cjson.encode(rec))
  if rec.st ~= ATTEMPT_SENDING then
    redis.call('ZREM', sending_key, attempt_member(attempts_key, id))
  end
  return rec, changed
end
