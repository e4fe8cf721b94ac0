-- The backlog of every lane of one shard, measured in one round trip (the lanes of a
-- shard share its hash tag: one Cluster slot). Per lane, over the consumer groups asked
-- about: the entries they hold (pending, plus XINFO's `lag` where Redis 7 has it), the
-- time (ms) of the oldest entry some group has not finished (its oldest pending entry,
-- or its first undelivered one), and the events the slowest group has not finished
-- (pending plus undelivered ones, these counted up to `cap`, since Redis 6.2's XINFO
-- has no `lag`). A lane whose stream does not exist fails the call (XINFO's "no such
-- key"), as any failed measurement does: the caller then refuses nothing.
-- KEYS: the shard's lane streams, lane 0 first
-- ARGV:
--   cap        count undelivered entries up to this many per group (1: only whether any)
--   groups...  the consumer groups to measure
-- Returns per key {entries, oldest ms (-1: none), waiting}.
local cap = tonumber(ARGV[1])
local wanted = {}
for i = 2, #ARGV do
  wanted[ARGV[i]] = true
end
local out = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local entries, waiting, oldest = 0, 0, -1
  local groups = redis.call('XINFO', 'GROUPS', key)
  for _, group in ipairs(groups) do
    local info = {}
    for i = 1, #group, 2 do
      info[group[i]] = group[i + 1]
    end
    if wanted[info['name']] then
      local pending = tonumber(info['pending']) or 0
      local lag = info['lag']
      entries = entries + pending + (type(lag) == 'number' and lag or 0)
      local function older(id)
        local ms = tonumber(string.match(id, '^(%d+)'))
        if ms and (oldest < 0 or ms < oldest) then
          oldest = ms
        end
      end
      if pending > 0 then
        local summary = redis.call('XPENDING', key, info['name'])
        if summary[2] then
          older(summary[2])
        end
      end
      local undelivered = redis.call(
        'XRANGE', key, '(' .. info['last-delivered-id'], '+', 'COUNT', math.max(cap, 1))
      if #undelivered > 0 then
        older(undelivered[1][1])
        waiting = math.max(waiting, pending + #undelivered)
      else
        waiting = math.max(waiting, pending)
      end
    end
  end
  out[k] = {entries, oldest, waiting}
end
return out
