-- Prepended to every script that changes a lead: keeps the lead's score
-- history, its place in the cohort aggregates and the funnel counters up to
-- date in the same atomic step as the change. Twin of StoredLead::touch /
-- enter in src/store/memory.rs and of src/domain/profiles.rs: keep them in
-- step.
--
-- KEYS[1], removed before the script's own KEYS: the partition's key prefix
--   `<prefix>:{p<N>}:`. Aggregate keys are built from it, so they share the
--   lead's hash slot (Redis Cluster safe):
--   cohort:<YYYYMM>                    hash  <group>␟<STAGE> leads now in the
--                                            stage, <group>␟q leads that ever
--                                            reached MQL or later
--   cohort:<YYYYMM>:<model>:<group>    zset  lead id → total as of its last
--                                            change
--   funnel:<utc day>                   hash  see FunnelEntry::increments
--   <group> is '' for all leads or `<attribute>=<value>` for each declared
--   cohort attribute the lead has.
-- ARGV[1], removed likewise: the profile spec (JSON, src/store/spec.rs).
--
-- Lead hash fields used here: f:<model> fit score, ft first-touch values
-- (source␟channel␟campaign) and fta its occurred_at, rq reached MQL,
-- rg the lead's registration in the cohort aggregates (JSON).
local P_BASE = table.remove(KEYS, 1)
local P_SPEC = cjson.decode(table.remove(ARGV, 1))
local P_SEP = '\31'
local P_DAY = 86400000

local function p_split(s)
  local out, start = {}, 1
  while true do
    local i = string.find(s, P_SEP, start, true)
    if not i then
      out[#out + 1] = string.sub(s, start)
      return out
    end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

-- `YYYYMM` of the UTC date of an instant (days-to-civil, proleptic Gregorian).
local function p_month(ms)
  local z = math.floor(ms / P_DAY) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d%02d', y, m)
end

-- The lead's hash as a table, and as HGETALL returned it.
local function p_fields(lead)
  local flat = redis.call('HGETALL', lead)
  local f = {}
  for i = 1, #flat, 2 do
    f[flat[i]] = flat[i + 1]
  end
  return f, flat
end

-- Every model's { name, behavior, fit } at `now` (ScoringModel::score):
-- types in name order, as the service sums them.
local function p_scores(f, now)
  local out = {}
  for _, m in ipairs(P_SPEC.m) do
    local types = {}
    for t in pairs(m.h) do
      types[#types + 1] = t
    end
    table.sort(types)
    local behavior = 0
    for _, t in ipairs(types) do
      local sum = tonumber(f['s:' .. m.n .. ':' .. t])
      if sum and (tonumber(f['n:' .. t]) or 0) > 0 then
        local h, anchor = m.h[t], tonumber(f['t:' .. t])
        if h > 0 and anchor then
          sum = sum * 2 ^ ((anchor - now) / h)
        end
        behavior = behavior + sum
      end
    end
    out[#out + 1] = { m.n, behavior, tonumber(f['f:' .. m.n]) or m.f }
  end
  return out
end

-- Appends a score history entry, unless the scores equal the newest one's.
local function p_history(lead, scores, now, cause)
  if P_SPEC.hl <= 0 then return end
  local key = lead .. ':scores'
  local parts = {}
  for _, s in ipairs(scores) do
    parts[#parts + 1] = s[1] .. '=' .. string.format('%.17g', s[2]) .. ',' .. string.format('%.17g', s[3])
  end
  local values = table.concat(parts, P_SEP)
  local newest = redis.call('LINDEX', key, 0)
  if newest then
    local first = string.find(newest, P_SEP, 1, true)
    local second = first and string.find(newest, P_SEP, first + 1, true)
    if second and string.sub(newest, second + 1) == values then return end
  end
  redis.call('LPUSH', key, string.format('%d', now) .. P_SEP .. cause .. P_SEP .. values)
  redis.call('LTRIM', key, 0, P_SPEC.hl - 1)
  local cutoff = now - P_SPEC.ha
  while true do
    local oldest = redis.call('LINDEX', key, -1)
    local at = oldest and tonumber(string.match(oldest, '^(%-?%d+)'))
    if not at or at >= cutoff then break end
    redis.call('RPOP', key)
  end
  redis.call('PEXPIRE', key, P_SPEC.ha)
end

-- Moves the lead's contribution to the cohort aggregates to its current
-- month, stage, attributes and scores. O(groups × models).
local function p_register(lead, lead_id, f, scores)
  -- Anonymous visitors (ids starting with U+001F) are not in cohorts.
  if string.byte(lead_id, 1) == 31 or f.mi or not f.c then return end
  local groups = { '' }
  for _, name in ipairs(P_SPEC.d) do
    local v = f['a:' .. name]
    if v then groups[#groups + 1] = name .. '=' .. v end
  end
  local models = {}
  for i, s in ipairs(scores) do
    models[i] = s[1]
  end
  local month = p_month(tonumber(f.c))
  local reg = cjson.encode({ month, f.st, f.rq == '1' and 1 or 0, groups, models })
  local counts = P_BASE .. 'cohort:' .. month
  if f.rg ~= reg then
    if f.rg then
      local old = cjson.decode(f.rg)
      local old_counts = P_BASE .. 'cohort:' .. old[1]
      for _, g in ipairs(old[4]) do
        redis.call('HINCRBY', old_counts, g .. P_SEP .. old[2], -1)
        if old[3] == 1 then redis.call('HINCRBY', old_counts, g .. P_SEP .. 'q', -1) end
        for _, m in ipairs(old[5]) do
          redis.call('ZREM', old_counts .. ':' .. m .. ':' .. g, lead_id)
        end
      end
    end
    for _, g in ipairs(groups) do
      redis.call('HINCRBY', counts, g .. P_SEP .. f.st, 1)
      if f.rq == '1' then redis.call('HINCRBY', counts, g .. P_SEP .. 'q', 1) end
    end
    redis.call('HSET', lead, 'rg', reg)
    f.rg = reg
  end
  for _, g in ipairs(groups) do
    for _, s in ipairs(scores) do
      redis.call('ZADD', counts .. ':' .. s[1] .. ':' .. g, string.format('%.17g', s[2] + s[3]), lead_id)
    end
  end
end

-- Counts the lead entering a stage in the funnel of the change's UTC day,
-- under its first touch. `change`: a stage change record (from, to, cause,
-- at, deal_amount); `now` dates the counters' expiry.
local function p_enter(lead, f, change, now)
  local at = tonumber(change.at)
  if P_SPEC.q[change.to] and f.rq ~= '1' then
    redis.call('HSET', lead, 'rq', '1')
    f.rq = '1'
  end
  local day = math.floor(at / P_DAY)
  local key = P_BASE .. 'funnel:' .. day
  local touch = f.ft and p_split(f.ft) or { '(none)', '(none)', '(none)' }
  local since = math.max(0, at - (tonumber(f.c) or at))
  local bucket = 0
  if since >= 1000 then bucket = math.floor(math.log(since / 1000) / math.log(1.1)) + 1 end
  local reopened = change.from == 'RECYCLED' and type(change.cause) == 'table' and change.cause.by == 'rule'
  local amount = change.deal_amount
  if type(amount) ~= 'number' then amount = nil end
  local groups = { '*', 'source=' .. touch[1], 'channel=' .. touch[2], 'campaign=' .. touch[3] }
  for _, g in ipairs(groups) do
    redis.call('HINCRBY', key, g .. P_SEP .. 'e' .. P_SEP .. change.to, 1)
    redis.call('HINCRBY', key, g .. P_SEP .. 'd' .. P_SEP .. change.to .. P_SEP .. bucket, 1)
    if reopened then redis.call('HINCRBY', key, g .. P_SEP .. 'r', 1) end
    if amount then
      redis.call('HINCRBY', key, g .. P_SEP .. 'w', 1)
      redis.call('HINCRBYFLOAT', key, g .. P_SEP .. 'v', string.format('%.17g', amount))
    end
  end
  local ttl = (day + 1) * P_DAY + P_SPEC.fr - now
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
end

-- Records the first touch if the signal at `at` is the lead's earliest.
local function p_first_touch(lead, f, values, at)
  if values == '' then return end
  local known = tonumber(f.fta)
  if known == nil or at < known then
    redis.call('HSET', lead, 'ft', values, 'fta', string.format('%d', at))
    f.ft, f.fta = values, string.format('%d', at)
  end
end

-- The history cause of a batch of counted signal types (signals_cause).
local function p_signals_cause(types)
  local first, many = nil, false
  for _, t in ipairs(types) do
    if first == nil then
      first = t
    elseif t ~= first then
      many = true
    end
  end
  if first == nil then return nil end
  if many then return 'signals' end
  return 'signal:' .. first
end

