-- How many entries of one lane's stream a consumer group has not been delivered yet,
-- counted up to a cap (Redis 6.2's XINFO has no `lag`): the backlog-length limit needs
-- only to know whether a lane is past it.
-- KEYS[1]: the lane's stream
-- ARGV:
--   last   the group's last-delivered-id
--   cap    count at most this many
-- Returns the count.
return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
