-- A rule could not reach the user (permanent provider error): fire the next rule now.
-- KEYS: cycle, timer keys (6)
-- ARGV:
--   tag          timer tag
--   cycle        cycle id
--   from_rule    the rule that failed
--   method       its contact method id
--   now_ms
-- Returns the index of the rule re-armed, or -1.
return cycle_advance(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]))
