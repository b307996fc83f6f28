-- Moves a lead through stage changes if it is still in the expected stage
-- (compare-and-set), recording each change in the lead's stage history and
-- in its partition's change feed, atomically.
--
-- KEYS: 1 lead hash, 2 stage history (list), 3 partition change feed (stream)
-- ARGV: expected stage, history_limit, feed_min_id (entries older may be
--       trimmed), lead id, then per change: to stage, at_ms, record (JSON)
-- Returns: { 1, '', feed ids } applied, { -1, current stage, {} } conflict,
--          { 0, '', {} } no such lead
local lead, history, feed = KEYS[1], KEYS[2], KEYS[3]
local current = redis.call('HGET', lead, 'st')
if not current then
  return { 0, '', {} }
end
if current ~= ARGV[1] then
  return { -1, current, {} }
end
local ids = {}
for i = 5, #ARGV, 3 do
  redis.call('HSET', lead, 'st', ARGV[i], 'ss', ARGV[i + 1])
  redis.call('LPUSH', history, ARGV[i + 2])
  ids[#ids + 1] = redis.call('XADD', feed, 'MINID', '~', ARGV[3], '*', 'l', ARGV[4], 'c', ARGV[i + 2])
end
redis.call('LTRIM', history, 0, tonumber(ARGV[2]) - 1)
return { 1, '', ids }
