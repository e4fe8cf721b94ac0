-- What the trim watch needs of every lane of one shard, in one round trip (the lanes of a
-- shard share its hash tag: one Cluster slot): how far each stream was trimmed, and what
-- the group still needs of it.
-- KEYS: the shard's lane streams, lane 0 first
-- ARGV:
--   group   the consumer group (history)
-- Returns per key: false when the stream does not exist (yet), else
-- {length, first entry id or '', max-deleted-entry-id or '' (Redis 6.2 has none),
--  the group's last-delivered-id or '' (no such group), its pending count,
--  its oldest pending id or ''}.
local group = ARGV[1]
local out = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local info = redis.pcall('XINFO', 'STREAM', key)
  if type(info) ~= 'table' or info.err then
    out[k] = false
  else
    local stream = {}
    for i = 1, #info, 2 do
      stream[info[i]] = info[i + 1]
    end
    local first = stream['first-entry']
    local row = {
      tonumber(stream['length']) or 0,
      type(first) == 'table' and first[1] or '',
      type(stream['max-deleted-entry-id']) == 'string' and stream['max-deleted-entry-id'] or '',
      '', 0, '',
    }
    for _, entry in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local fields = {}
      for i = 1, #entry, 2 do
        fields[entry[i]] = entry[i + 1]
      end
      if fields['name'] == group then
        row[4] = fields['last-delivered-id']
        row[5] = tonumber(fields['pending']) or 0
        if row[5] > 0 then
          local summary = redis.call('XPENDING', key, group)
          row[6] = summary[2] or ''
        end
      end
    end
    out[k] = row
  end
end
return out
