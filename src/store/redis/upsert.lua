-- Creates a lead or replaces its profile, atomically; signals are kept.
-- KEYS: 1 lead hash, 2 its per-day signal counters (read only), 3 the
--       partition's lead index (zset: lead id by created_at)
-- ARGV: now_ms, created_at_ms ('' = keep, or now for a new lead),
--       account_id ('' = none), lead id, number of models N, N × (model,
--       fit score of the new profile), then attribute name, value pairs
-- Returns: { HGETALL lead, HGETALL days, the previous account id or '' }
local lead = KEYS[1]
local now = tonumber(ARGV[1])
local previous_account = redis.call('HGET', lead, 'acc') or ''
for _, field in ipairs(redis.call('HKEYS', lead)) do
  local kind = string.sub(field, 1, 2)
  if kind == 'a:' or kind == 'f:' then
    redis.call('HDEL', lead, field)
  end
end
local created = redis.call('HEXISTS', lead, 'c') == 0
if created then
  redis.call('HSET', lead, 'c', ARGV[1], 'st', 'LEAD', 'ss', ARGV[1])
end
if ARGV[2] ~= '' then
  redis.call('HSET', lead, 'c', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('HSET', lead, 'acc', ARGV[3])
else
  redis.call('HDEL', lead, 'acc')
end
redis.call('ZADD', KEYS[3], redis.call('HGET', lead, 'c'), ARGV[4])
local n = tonumber(ARGV[5])
local i = 6
for _ = 1, n do
  redis.call('HSET', lead, 'f:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HSET', lead, 'a:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
local f = p_fields(lead)
-- A new lead entered LEAD when the CRM created it, if it says when.
if created then p_enter(lead, f, { to = 'LEAD', at = tonumber(f.c), created = true }, now) end
local scores = p_scores(f, now)
p_register(lead, ARGV[4], f, scores)
p_history(lead, scores, now, 'profile', true)
return { redis.call('HGETALL', lead), redis.call('HGETALL', KEYS[2]), previous_account }
