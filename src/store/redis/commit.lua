-- Writes everything a batch of signals did to one lead — computed by the
-- service from what it read — if the lead is still as it was read
-- (compare-and-set on its recorded-signal count and stage; a lead read as
-- new must still not exist; an identified visitor never matches). Used when
-- the batch may fire triggers whose conditions the service evaluates, so
-- that the score change, its triggers and its stage changes land together.
--
-- KEYS: 1 lead hash, 2 seen ids, 3 day counters, 4 raw history, 5 lead
--       index, 6 stage history, 7 change feed, 8 trigger stream,
--       9… inactivity indexes
-- ARGV: 1 expected recorded count, 2 expected stage ('' = a new lead),
--       3 now_ms, 4 dedupe_window_ms, 5 retention_ms, 6 history_limit,
--       7 lead id, 8 initial stage, 9 engaged (1/0), 10 feed retention ms,
--       11 trigger retention ms, 12 stage history limit, 13 first-touch
--       values of the batch's earliest signal ('' = none), 14 its
--       occurred_at ms, 15 score history cause ('' = the score did not
--       change),
--       then: N, N tally field/value pairs; N, N day counter pairs;
--       N, N history records (oldest first, their event ids = seen ids);
--       N, N × (definition, cooldown_ms, payload) signal triggers;
--       then per stage change: to, at_ms, record, N, N × (definition,
--       cooldown_ms, payload)
-- Returns: 1 written, 0 the lead changed (nothing written)
local lead, seen, days, hist, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local stages, feed, triggers = KEYS[6], KEYS[7], KEYS[8]
local now = ARGV[3]
local exists = redis.call('EXISTS', lead) == 1
if ARGV[2] == '' then
  if exists then return 0 end
else
  if not exists or redis.call('HEXISTS', lead, 'mi') == 1 then return 0 end
  if (redis.call('HGET', lead, 'nr') or '0') ~= ARGV[1] or redis.call('HGET', lead, 'st') ~= ARGV[2] then
    return 0
  end
end

local time = redis.call('TIME')
local redis_now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local feed_min = string.format('%d', redis_now - tonumber(ARGV[10]))
local trigger_min = string.format('%d', redis_now - tonumber(ARGV[11]))
local DAY = 86400000

if not exists then
  redis.call('HSET', lead, 'c', now, 'st', ARGV[8], 'ss', now)
  redis.call('ZADD', index, now, ARGV[7])
end
local f = p_fields(lead)
if ARGV[13] ~= '' then p_first_touch(lead, f, ARGV[13], tonumber(ARGV[14]), tonumber(now)) end
if not exists then p_enter(lead, f, { to = ARGV[8], at = tonumber(now), created = true }, tonumber(now)) end
for _, field in ipairs(redis.call('HKEYS', lead)) do
  local kind = string.sub(field, 1, 2)
  if kind == 'n:' or kind == 't:' or kind == 's:' then
    redis.call('HDEL', lead, field)
  end
end
local i = 16
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', lead, ARGV[i], ARGV[i + 1]); i = i + 2
end
redis.call('DEL', days)
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', days, ARGV[i], ARGV[i + 1]); i = i + 2
end
redis.call('PEXPIRE', days, tonumber(ARGV[5]) + DAY)

redis.call('ZREMRANGEBYSCORE', seen, '-inf', tonumber(now) - tonumber(ARGV[4]))
n = tonumber(ARGV[i]); i = i + 1
local limit = tonumber(ARGV[6])
for _ = 1, n do
  local record = ARGV[i]; i = i + 1
  redis.call('ZADD', seen, now, cjson.decode(record)['e'])
  if limit > 0 then redis.call('LPUSH', hist, record) end
end
redis.call('PEXPIRE', seen, tonumber(ARGV[4]))
if limit > 0 and n > 0 then
  redis.call('LTRIM', hist, 0, limit - 1)
  redis.call('PEXPIRE', hist, tonumber(ARGV[5]))
end
if ARGV[9] == '1' then
  for k = 9, #KEYS do
    redis.call('ZADD', KEYS[k], now, ARGV[7])
  end
end

local function fire(definition, cooldown, payload, at)
  local field = 'tf:' .. definition
  local last = tonumber(redis.call('HGET', lead, field))
  if last == nil or tonumber(at) - last >= tonumber(cooldown) then
    redis.call('HSET', lead, field, at)
    redis.call('XADD', triggers, 'MINID', '~', trigger_min, '*', 't', payload)
  end
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  fire(ARGV[i], ARGV[i + 1], ARGV[i + 2], now); i = i + 3
end
local changed = false
while i <= #ARGV do
  local at = ARGV[i + 1]
  redis.call('HSET', lead, 'st', ARGV[i], 'ss', at)
  f.st = ARGV[i]
  p_enter(lead, f, cjson.decode(ARGV[i + 2]), tonumber(now))
  redis.call('LPUSH', stages, ARGV[i + 2])
  redis.call('XADD', feed, 'MINID', '~', feed_min, '*', 'l', ARGV[7], 'c', ARGV[i + 2])
  changed = true
  n = tonumber(ARGV[i + 3]); i = i + 4
  for _ = 1, n do
    fire(ARGV[i], ARGV[i + 1], ARGV[i + 2], at); i = i + 3
  end
end
if changed then
  redis.call('LTRIM', stages, 0, tonumber(ARGV[12]) - 1)
end
-- The tallies were rewritten above: read them back for the scores.
local fresh = p_fields(lead)
local scores = p_scores(fresh, tonumber(now))
p_register(lead, ARGV[7], fresh, scores)
if ARGV[15] ~= '' then p_history(lead, scores, tonumber(now), ARGV[15], false) end
return 1
