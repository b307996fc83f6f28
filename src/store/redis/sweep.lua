-- Fires an inactivity trigger for a lead found in a definition's index, if
-- it is still as the sweep read it: no counted signal since (`le`
-- unchanged), the trigger not fired in this quiet spell, and its cooldown
-- over. Several replicas may sweep at once: only one call can fire.
--
-- KEYS: 1 lead hash, 2 partition trigger stream, 3 the definition's index
-- ARGV: lead id, expected le (ms), definition id, cooldown_ms, fired_at_ms,
--       payload ('' = the condition did not hold: only leave the index),
--       trigger retention ms
-- Returns: 1 fired, 0 not
local lead, triggers, index = KEYS[1], KEYS[2], KEYS[3]
local le = redis.call('HGET', lead, 'le')
if le ~= ARGV[2] then
  -- Engaged since: the ingest script already put it back in the index.
  return 0
end
redis.call('ZREM', index, ARGV[1])
if ARGV[6] == '' then
  return 0
end
local field = 'tf:' .. ARGV[3]
local last = tonumber(redis.call('HGET', lead, field))
if last and (last >= tonumber(le) or tonumber(ARGV[5]) - last < tonumber(ARGV[4])) then
  return 0
end
redis.call('HSET', lead, field, ARGV[5])
-- Streams are trimmed by Redis' own clock, which assigns their entry ids.
local time = redis.call('TIME')
local redis_now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local trigger_min = string.format('%d', redis_now - tonumber(ARGV[7]))
redis.call('XADD', triggers, 'MINID', '~', trigger_min, '*', 't', ARGV[6])
return 1
