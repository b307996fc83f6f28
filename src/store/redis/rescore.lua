-- Replaces a lead's tallies and day counters with ones rebuilt from its raw
-- history, if no signal was recorded since they were read (compare-and-set
-- on the recorded-signal count).
--
-- KEYS: 1 lead hash, 2 day counters (hash)
-- ARGV: expected recorded count, last engaged ms ('' = none), number of
--       lead-hash field/value pairs N, the N pairs, then day counter pairs
-- Returns: 1 replaced, 0 the lead changed (or is gone)
local lead, days = KEYS[1], KEYS[2]
local recorded = redis.call('HGET', lead, 'nr') or '0'
if redis.call('EXISTS', lead) == 0 or recorded ~= ARGV[1] then
  return 0
end
for _, field in ipairs(redis.call('HKEYS', lead)) do
  local kind = string.sub(field, 1, 2)
  if kind == 'n:' or kind == 't:' or kind == 's:' then
    redis.call('HDEL', lead, field)
  end
end
if ARGV[2] ~= '' then
  redis.call('HSET', lead, 'le', ARGV[2])
else
  redis.call('HDEL', lead, 'le')
end
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  redis.call('HSET', lead, ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('DEL', days)
while i <= #ARGV do
  redis.call('HSET', days, ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
