-- Moves a lead through stage changes if it is still in the expected stage
-- (compare-and-set), recording each change in the lead's stage history and
-- in its partition's change feed, and firing the change's nurture triggers
-- (unless a trigger's cooldown for this lead is still running) into the
-- partition's trigger stream, all atomically.
--
-- KEYS: 1 lead hash, 2 stage history (list), 3 partition change feed
--       (stream), 4 partition trigger stream
-- ARGV: expected stage, history_limit, feed retention ms, lead id,
--       trigger retention ms, then per change: to stage, at_ms, record (JSON),
--       number of triggers N, then N × (definition id, cooldown_ms, payload)
-- Returns: { 1, '', feed ids, trigger ids } applied,
--          { -1, current stage, {}, {} } conflict, { 0, '', {}, {} } no lead
local lead, history, feed, triggers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local current = redis.call('HGET', lead, 'st')
if not current then
  return { 0, '', {}, {} }
end
if current ~= ARGV[1] then
  return { -1, current, {}, {} }
end
-- Streams are trimmed by Redis' own clock, which assigns their entry ids.
local time = redis.call('TIME')
local redis_now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local feed_min = string.format('%d', redis_now - tonumber(ARGV[3]))
local trigger_min = string.format('%d', redis_now - tonumber(ARGV[5]))
local ids, fired = {}, {}
local f = p_fields(lead)
local last_at = nil
local i = 6
while i <= #ARGV do
  local at_text = ARGV[i + 1]
  local at = tonumber(at_text)
  redis.call('HSET', lead, 'st', ARGV[i], 'ss', ARGV[i + 1])
  f.st = ARGV[i]
  p_enter(lead, f, cjson.decode(ARGV[i + 2]), at)
  last_at = at
  redis.call('LPUSH', history, ARGV[i + 2])
  ids[#ids + 1] = redis.call('XADD', feed, 'MINID', '~', feed_min, '*', 'l', ARGV[4], 'c', ARGV[i + 2])
  local n = tonumber(ARGV[i + 3])
  i = i + 4
  for _ = 1, n do
    local field = 'tf:' .. ARGV[i]
    local last = tonumber(redis.call('HGET', lead, field))
    if last == nil or at - last >= tonumber(ARGV[i + 1]) then
      redis.call('HSET', lead, field, at_text)
      fired[#fired + 1] = redis.call('XADD', triggers, 'MINID', '~', trigger_min, '*', 't', ARGV[i + 2])
    end
    i = i + 3
  end
end
redis.call('LTRIM', history, 0, tonumber(ARGV[2]) - 1)
if last_at then p_register(lead, ARGV[4], f, p_scores(f, last_at)) end
return { 1, '', ids, fired }
