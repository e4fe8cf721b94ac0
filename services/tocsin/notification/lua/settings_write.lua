-- Compare-and-set a user's notification settings and keep the indexes in step.
-- KEYS: user settings, contact method owners, then the number indexes named in `changes`
-- ARGV:
--   user       user id
--   expected   the settings as read ('' = none)
--   settings   the new settings
--   changes    index changes (JSON): {own = [ids to claim], disown = [ids],
--              link = [[key index, id]], unlink = [[key index, id]]}
-- Returns 1, 0 when the settings changed meanwhile (read again), or -1 when a claimed id
-- belongs to another user.
local user = ARGV[1]
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[2] then
  return 0
end
local changes = cjson.decode(ARGV[4])
for _, id in ipairs(changes.own) do
  local owner = redis.call('HGET', KEYS[2], id)
  if owner and owner ~= user then
    return -1
  end
end
redis.call('SET', KEYS[1], ARGV[3])
for _, id in ipairs(changes.own) do
  redis.call('HSET', KEYS[2], id, user)
end
for _, id in ipairs(changes.disown) do
  redis.call('HDEL', KEYS[2], id)
end
for _, link in ipairs(changes.unlink) do
  redis.call('HDEL', KEYS[link[1]], link[2])
end
for _, link in ipairs(changes.link) do
  redis.call('HSET', KEYS[link[1]], link[2], user)
end
return 1
