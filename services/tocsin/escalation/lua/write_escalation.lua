-- Write an escalation state with compare-and-set on its version, together with its level
-- timer, its outbox ("hop") timer and its place in the active index: one atomic step, so
-- a crash means "redo", never "lost" or "twice". Prepended by the timer library.
--
-- KEYS[1] state hash, KEYS[2] active index (zset incident -> next fire ms),
-- KEYS[3..] timers.timer_keys(shard), then, with `out_user`, the level firing's
-- reported-out hash (store.out_key), then, with `pages_key`, the shard's page stream,
-- then, with `notes_key`, the timeline outbox's stream
-- ARGV:
--   tag                shard tag
--   expected_version   "0": must not exist yet
--   state              JSON (codec.dump_state)
--   version            the new version
--   next_fire_ms       -1: none
--   level_timer        level timer id
--   level_payload      codec.LevelTimerPayload
--   hop_timer          hop timer id ("": none)
--   hop_payload        codec.HopPayload
--   hop_due_ms
--   incident           incident id
--   expire_ms          0: keep
--   hop_lease_ms       0: leave the hop armed; else claim it for the caller at once, with
--                      this lease (timer_claim, as TimerStore.claim does), so it is sent
--                      with no round trip of its own. Should the caller die before it is
--                      done, the lease runs out and the shard's worker sends it.
--   out_user           "": no report; else a report that `out_user`'s first page went
--                      out at `out_ms`, recorded first (HSETNX: the first report wins)
--                      and the write made only if it was the first: the report and the
--                      release it causes in one step (engine.report_page_out's fast path)
--   out_ms
--   out_ttl_ms         the reported-out hash's lifetime
--   pages_key          "": no pages; else the shard's page stream (runtime/page_outbox.py),
--                      to which every page is added once the write is made
--   pages_trace        the traceparent of the pages and the notes (the entries' `tp`)
--   notes_key          "": no notes; else the timeline outbox's stream (one Redis server
--                      only: another slot), to which every note is added
--   notes_maxlen       the timeline outbox's cap (XADD MAXLEN ~)
--   page_count         how many entries are pages (the rest are notes)
--   entry...           the rest: the pages' NotifyRequest protobufs, then the notes'
--                      AppendTimelineRequest protobufs, each in order
-- Returns {"ok"} | {"ok", hop claim} | {"exists", version} | {"conflict", version} |
-- {"reported"} (out_user was reported before: nothing written)
local tag = ARGV[1]
if ARGV[14] ~= "" then
  local out = KEYS[#KEYS]
  local first = redis.call("HSETNX", out, ARGV[14], ARGV[15])
  redis.call("PEXPIRE", out, ARGV[16])
  if first == 0 then return {"reported"} end
end
local current = redis.call("HGET", KEYS[1], "version")
if ARGV[2] == "0" then
  if current then return {"exists", current} end
elseif current ~= ARGV[2] then
  return {"conflict", current or "0"}
end
redis.call("HSET", KEYS[1], "json", ARGV[3], "version", ARGV[4])
if ARGV[12] ~= "0" then
  redis.call("PEXPIRE", KEYS[1], ARGV[12])
else
  redis.call("PERSIST", KEYS[1])
end
if tonumber(ARGV[5]) >= 0 then
  timer_arm(tag, ARGV[6], ARGV[5], ARGV[7])
  redis.call("ZADD", KEYS[2], ARGV[5], ARGV[11])
else
  timer_cancel(tag, ARGV[6])
  redis.call("ZREM", KEYS[2], ARGV[11])
end
local pages = tonumber(ARGV[21])
if ARGV[17] ~= "" then
  for i = 22, 21 + pages do
    redis.call("XADD", ARGV[17], "*", "r", ARGV[i], "tp", ARGV[18])
  end
end
if ARGV[19] ~= "" then
  for i = 22 + pages, #ARGV do
    redis.call("XADD", ARGV[19], "MAXLEN", "~", ARGV[20], "*", "r", ARGV[i], "tp", ARGV[18])
  end
end
if ARGV[8] ~= "" then
  timer_arm(tag, ARGV[8], ARGV[10], ARGV[9])
  if ARGV[13] ~= "0" then
    local claimed = timer_claim(tag, ARGV[8], ARGV[10], ARGV[13])
    if claimed then return {"ok", claimed} end
  end
end
return {"ok"}
