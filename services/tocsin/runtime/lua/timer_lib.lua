-- tocsin durable timers: a library of local functions that scripts prepend.
--
-- Every key lives under one shard's hash tag T (e.g. "{t17}", see timers.shard_tag):
--   tocsin:T:timers         zset  timer id -> due time (ms); armed, waiting to be claimed
--   tocsin:T:inflight       zset  timer id -> lease deadline (ms); claimed, not completed
--   tocsin:T:timer_payload  hash  timer id -> opaque payload bytes
--   tocsin:T:timer_due      hash  timer id -> due time (ms), kept while the timer is in flight
--   tocsin:T:timer_fence    hash  timer id -> fence of its current claim (only while in flight)
--   tocsin:T:fence_seq      string  per-shard counter; every claim takes the next value, so
--                                   fences grow for a timer across claims, re-arms and reuse
-- A script using the library must run in the slot of T: declare timers.timer_keys(shard)
-- (or at least one key with tag T) in KEYS. Times are always passed in from the
-- caller's clock; nothing here reads the server's time.

local function timer_key(tag, name)
  return 'tocsin:' .. tag .. ':' .. name
end

-- Arm (or re-arm) timer `id` to be due at `due_ms` with `payload`. Re-arming replaces the
-- previous arming; a claim of the previous arming still in flight becomes stale, so its
-- completion is a no-op.
local function timer_arm(tag, id, due_ms, payload)
  redis.call('ZADD', timer_key(tag, 'timers'), due_ms, id)
  redis.call('ZREM', timer_key(tag, 'inflight'), id)
  redis.call('HSET', timer_key(tag, 'timer_payload'), id, payload)
  redis.call('HSET', timer_key(tag, 'timer_due'), id, due_ms)
  redis.call('HDEL', timer_key(tag, 'timer_fence'), id)
end

local function timer_forget(tag, id)
  redis.call('HDEL', timer_key(tag, 'timer_payload'), id)
  redis.call('HDEL', timer_key(tag, 'timer_due'), id)
  redis.call('HDEL', timer_key(tag, 'timer_fence'), id)
end

-- Cancel timer `id`, waiting or in flight. Returns 1 if it existed, else 0.
local function timer_cancel(tag, id)
  local removed = redis.call('ZREM', timer_key(tag, 'timers'), id)
    + redis.call('ZREM', timer_key(tag, 'inflight'), id)
  timer_forget(tag, id)
  if removed > 0 then return 1 end
  return 0
end

-- Complete the claim of `id` holding `fence`. Returns 1, or 0 if that claim is stale
-- (lease expired and re-offered, re-armed, cancelled or already completed).
local function timer_complete(tag, id, fence)
  local current = redis.call('HGET', timer_key(tag, 'timer_fence'), id)
  if not current or tonumber(current) ~= tonumber(fence) then
    return 0
  end
  redis.call('ZREM', timer_key(tag, 'inflight'), id)
  timer_forget(tag, id)
  return 1
end

-- Put the claim of `id` holding `fence` back to wait until `due_ms` (a handler that
-- could not finish now, e.g. a peer still starting, retries soon instead of after its
-- lease). Returns 1, or 0 if that claim is stale (nothing changed).
local function timer_retry(tag, id, fence, due_ms)
  local current = redis.call('HGET', timer_key(tag, 'timer_fence'), id)
  if not current or tonumber(current) ~= tonumber(fence) then
    return 0
  end
  redis.call('ZREM', timer_key(tag, 'inflight'), id)
  redis.call('HDEL', timer_key(tag, 'timer_fence'), id)
  redis.call('ZADD', timer_key(tag, 'timers'), due_ms, id)
  redis.call('HSET', timer_key(tag, 'timer_due'), id, due_ms)
  return 1
end

-- Move waiting timer `id` into flight; returns {id, payload, due_ms, fence, lease_deadline_ms}.
local function timer_take(tag, id, now_ms, lease_ms)
  local deadline = tonumber(now_ms) + tonumber(lease_ms)
  local fence = redis.call('INCR', timer_key(tag, 'fence_seq'))
  redis.call('ZREM', timer_key(tag, 'timers'), id)
  redis.call('ZADD', timer_key(tag, 'inflight'), deadline, id)
  redis.call('HSET', timer_key(tag, 'timer_fence'), id, fence)
  local payload = redis.call('HGET', timer_key(tag, 'timer_payload'), id) or ''
  local due = tonumber(redis.call('HGET', timer_key(tag, 'timer_due'), id) or now_ms)
  return {id, payload, due, fence, deadline}
end

-- Claim timer `id` if it is waiting and due at `now_ms`; else false.
local function timer_claim(tag, id, now_ms, lease_ms)
  local due = redis.call('ZSCORE', timer_key(tag, 'timers'), id)
  if not due or tonumber(due) > tonumber(now_ms) then
    return false
  end
  return timer_take(tag, id, now_ms, lease_ms)
end

-- Put back up to `limit` in-flight timers whose lease ended by `now_ms`, due as before.
local function timer_reap(tag, now_ms, limit)
  local expired = redis.call('ZRANGEBYSCORE', timer_key(tag, 'inflight'), '-inf', now_ms,
    'LIMIT', 0, limit)
  for _, id in ipairs(expired) do
    local due = redis.call('HGET', timer_key(tag, 'timer_due'), id) or now_ms
    redis.call('ZREM', timer_key(tag, 'inflight'), id)
    redis.call('HDEL', timer_key(tag, 'timer_fence'), id)
    redis.call('ZADD', timer_key(tag, 'timers'), due, id)
  end
  return #expired
end

-- Reap expired leases, then claim up to `limit` timers due by `now_ms`, earliest first.
local function timer_claim_due(tag, now_ms, limit, lease_ms)
  timer_reap(tag, now_ms, limit)
  local due = redis.call('ZRANGEBYSCORE', timer_key(tag, 'timers'), '-inf', now_ms,
    'LIMIT', 0, limit)
  local claimed = {}
  for _, id in ipairs(due) do
    claimed[#claimed + 1] = timer_take(tag, id, now_ms, lease_ms)
  end
  return claimed
end

-- The earliest moment a claim could return something: the first due time of a waiting
-- timer or the first lease deadline in flight. -1 if the shard has no timers.
local function timer_next_wake(tag)
  local next_ms = -1
  for _, name in ipairs({'timers', 'inflight'}) do
    local head = redis.call('ZRANGE', timer_key(tag, name), 0, 0, 'WITHSCORES')
    if head[2] and (next_ms < 0 or tonumber(head[2]) < next_ms) then
      next_ms = tonumber(head[2])
    end
  end
  return next_ms
end
