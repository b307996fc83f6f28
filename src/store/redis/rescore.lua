-- Replaces a lead's tallies and day counters with ones rebuilt from its raw
-- history, if no signal was recorded since they were read (compare-and-set
-- on the recorded-signal count).
--
-- KEYS: 1 lead hash, 2 day counters (hash)
-- ARGV: expected recorded count, last engaged ms ('' = none), now ms,
--       lead id, number of lead-hash field/value pairs N (tallies and `f:<model>`
--       fits), the N pairs, then day counter pairs
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
local now, lead_id = tonumber(ARGV[3]), ARGV[4]
local n = tonumber(ARGV[5])
local i = 6
for _ = 1, n do
  redis.call('HSET', lead, ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('DEL', days)
while i <= #ARGV do
  redis.call('HSET', days, ARGV[i], ARGV[i + 1])
  i = i + 2
end
local f = p_fields(lead)
local scores = p_scores(f, now)
p_register(lead, lead_id, f, scores)
p_history(lead, scores, now, 'rescore:' .. P_SPEC.v, true)
return 1
