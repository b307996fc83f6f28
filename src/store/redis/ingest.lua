-- Records a batch of signals on one lead, atomically: de-duplicates by
-- event id, applies per-UTC-day caps, updates the decayed per-type sums and
-- keeps the bounded raw history. Twin of src/domain/ledger.rs and
-- src/domain/decay.rs: keep them in step.
--
-- KEYS: 1 lead hash, 2 seen event ids (zset), 3 signals per type per UTC
--       day (hash, `<type>:<day>`), 4 raw history (list), 5 the partition's
--       lead index (zset: lead id by created_at), 6… the partition's
--       indexes of the inactivity triggers (zset: lead id by last engagement)
-- ARGV: now_ms, dedupe_window_ms, retention_ms, history_limit, lead id,
--       stage if the lead is new, the batch's earliest signal (1-based
--       index) and its first-touch values (see profile.lua), n_models, the
--       n_models model names, then per signal:
--       event_id, type, occurred_at_ms, daily_cap (0 = none), history record,
--       and per model (in the order named): half_life_ms (0 = none), points
-- Returns: { statuses (1 accepted, 2 duplicate, 3 capped), HGETALL lead,
--            HGETALL days, '' }, or for an identified visitor
--            { {}, {}, {}, the lead id it was identified as } (nothing written)
local lead, seen, days, hist, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
local hist_limit = tonumber(ARGV[4])
local lead_id = ARGV[5]
local initial_stage = ARGV[6]
local touch_index, touch_values = tonumber(ARGV[7]), ARGV[8]
local n_models = tonumber(ARGV[9])
local models = {}
for m = 1, n_models do
  models[m] = ARGV[9 + m]
end
local merged_into = redis.call('HGET', lead, 'mi')
if merged_into then
  return { {}, {}, {}, merged_into }
end
local DAY = 86400000
local oldest_day = math.floor((now - retention) / DAY)

redis.call('ZREMRANGEBYSCORE', seen, '-inf', now - window)
local created = redis.call('EXISTS', lead) == 0
if created then
  redis.call('HSET', lead, 'c', ARGV[1], 'st', initial_stage, 'ss', ARGV[1])
  redis.call('ZADD', index, ARGV[1], lead_id)
end

local statuses, counted_types = {}, {}
local touch_at = nil
local used_history, engaged = false, false
local i = 10 + n_models
while i <= #ARGV do
  local event_id, typ, at_text = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local at, cap, record = tonumber(at_text), tonumber(ARGV[i + 3]), ARGV[i + 4]
  local w = i + 5
  i = w + 2 * n_models
  if redis.call('ZSCORE', seen, event_id) then
    statuses[#statuses + 1] = 2
  else
    if #statuses + 1 == touch_index then touch_at = at end
    redis.call('ZADD', seen, now, event_id)
    redis.call('HINCRBY', lead, 'nr', 1)
    local n = redis.call('HINCRBY', days, typ .. ':' .. math.floor(at / DAY), 1)
    if n == 1 then
      -- A new day counter: forget the days past retention.
      for _, field in ipairs(redis.call('HKEYS', days)) do
        local day = tonumber(string.match(field, ':(%-?%d+)$'))
        if day and day < oldest_day then
          redis.call('HDEL', days, field)
        end
      end
    end
    local counted = cap == 0 or n <= cap
    if hist_limit > 0 then
      redis.call('LPUSH', hist, record)
      used_history = true
    end
    if counted then
      local last = tonumber(redis.call('HGET', lead, 't:' .. typ))
      for m = 1, n_models do
        local h = tonumber(ARGV[w + 2 * (m - 1)])
        local p = tonumber(ARGV[w + 2 * (m - 1) + 1])
        local field = 's:' .. models[m] .. ':' .. typ
        local sum
        if last == nil then
          sum = p
        else
          local cur = tonumber(redis.call('HGET', lead, field)) or 0
          if at > last then
            if h > 0 then cur = cur * 2 ^ ((last - at) / h) end
            sum = cur + p
          elseif h > 0 then
            sum = cur + p * 2 ^ ((at - last) / h)
          else
            sum = cur + p
          end
        end
        redis.call('HSET', lead, field, string.format('%.17g', sum))
      end
      redis.call('HINCRBY', lead, 'n:' .. typ, 1)
      if last == nil or at > last then
        redis.call('HSET', lead, 't:' .. typ, at_text)
      end
      engaged = true
      counted_types[#counted_types + 1] = typ
      statuses[#statuses + 1] = 1
    else
      statuses[#statuses + 1] = 3
    end
  end
end

redis.call('PEXPIRE', seen, window)
redis.call('PEXPIRE', days, retention + DAY)
if engaged then
  redis.call('HSET', lead, 'le', ARGV[1])
  for k = 6, #KEYS do
    redis.call('ZADD', KEYS[k], ARGV[1], lead_id)
  end
end
if used_history then
  redis.call('LTRIM', hist, 0, hist_limit - 1)
  redis.call('PEXPIRE', hist, retention)
end
-- The lead as returned; what profile.lua writes below (first touch,
-- funnel and cohort bookkeeping) is not read by the service.
local f, flat = p_fields(lead)
if touch_at then p_first_touch(lead, f, touch_values, touch_at, now) end
if created then p_enter(lead, f, { to = initial_stage, at = now, created = true }, now) end
local cause = p_signals_cause(counted_types)
-- Duplicates and capped signals leave the score as it was.
if created or cause then
  local scores = p_scores(f, now)
  p_register(lead, lead_id, f, scores)
  if cause then p_history(lead, scores, now, cause, false) end
end
return { statuses, flat, redis.call('HGETALL', days), '' }
