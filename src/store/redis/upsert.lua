-- Creates a lead or replaces its profile, atomically; signals are kept.
-- KEYS: 1 lead hash, 2 its per-day signal counters (read only), 3 the
--       partition's lead index (zset: lead id by created_at)
-- ARGV: now_ms, created_at_ms ('' = keep, or now for a new lead),
--       account_id ('' = none), lead id, then attribute name, value pairs
-- Returns: { HGETALL lead, HGETALL days }
local lead = KEYS[1]
for _, field in ipairs(redis.call('HKEYS', lead)) do
  if string.sub(field, 1, 2) == 'a:' then
    redis.call('HDEL', lead, field)
  end
end
if redis.call('HEXISTS', lead, 'c') == 0 then
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
for i = 5, #ARGV, 2 do
  redis.call('HSET', lead, 'a:' .. ARGV[i], ARGV[i + 1])
end
return { redis.call('HGETALL', lead), redis.call('HGETALL', KEYS[2]) }
