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
-- ARGV[1…], removed likewise: the profile spec (src/store/spec.rs,
--   `ProfileSpec::lua_args`): its length N, then history limit, history
--   age ms, funnel retention ms, rule-set version, the cohort attributes
--   (count, names), the stages that count as reached MQL (count, names),
--   the models (count, then per model: name, fit of an empty profile,
--   number of scored types, then type, half-life ms (0: none) pairs in
--   type-name order). Positional, because decoding JSON on every call
--   costs more than the rest of this file.
--
-- Lead hash fields used here: f:<model> fit score, ft first-touch values
-- (source␟channel␟campaign) and fta its occurred_at, rq reached MQL, mr
-- the furthest funnel stage reached (rank), fe a creation entry waiting
-- for the first touch, rg the lead's registration in the cohort
-- aggregates (JSON).
local P_BASE = table.remove(KEYS, 1)
local P_SPEC = { d = {}, q = {}, m = {} }
do
  local n = tonumber(ARGV[1])
  local i = 2
  local function take()
    local v = ARGV[i]
    i = i + 1
    return v
  end
  P_SPEC.hl, P_SPEC.ha, P_SPEC.fr, P_SPEC.v = tonumber(take()), tonumber(take()), tonumber(take()), take()
  for _ = 1, tonumber(take()) do
    P_SPEC.d[#P_SPEC.d + 1] = take()
  end
  for _ = 1, tonumber(take()) do
    P_SPEC.q[take()] = 1
  end
  for _ = 1, tonumber(take()) do
    local m = { n = take(), f = tonumber(take()), h = {} }
    for _ = 1, tonumber(take()) do
      m.h[#m.h + 1] = { take(), tonumber(take()) }
    end
    P_SPEC.m[#P_SPEC.m + 1] = m
  end
  -- Drop the spec from ARGV: the script's own arguments start at 1.
  local total = #ARGV
  for k = 1, total - n - 1 do
    ARGV[k] = ARGV[k + n + 1]
  end
  for k = total - n, total do
    ARGV[k] = nil
  end
end
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
-- the spec lists each model's types in name order with their half-lives,
-- so the sum is taken in the service's order.
local function p_scores(f, now)
  local out = {}
  for _, m in ipairs(P_SPEC.m) do
    local behavior = 0
    for _, th in ipairs(m.h) do
      local t = th[1]
      local sum = tonumber(f['s:' .. m.n .. ':' .. t])
      if sum and (tonumber(f['n:' .. t]) or 0) > 0 then
        local h, anchor = th[2], tonumber(f['t:' .. t])
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

-- Appends a score history entry; with `dedupe`, not when the scores equal
-- the newest entry's (a profile saved again unchanged). Bounded by count
-- here; entries past score_history_age are skipped when read, and the
-- list expires when the lead's score has not changed for that long.
local function p_history(lead, scores, now, cause, dedupe)
  if P_SPEC.hl <= 0 then return end
  local key = lead .. ':scores'
  local parts = {}
  for _, s in ipairs(scores) do
    parts[#parts + 1] = s[1] .. '=' .. string.format('%.17g', s[2]) .. ',' .. string.format('%.17g', s[3])
  end
  local values = table.concat(parts, P_SEP)
  if dedupe then
    local newest = redis.call('LINDEX', key, 0)
    if newest then
      local first = string.find(newest, P_SEP, 1, true)
      local second = first and string.find(newest, P_SEP, first + 1, true)
      if second and string.sub(newest, second + 1) == values then return end
    end
  end
  redis.call('LPUSH', key, string.format('%d', now) .. P_SEP .. cause .. P_SEP .. values)
  redis.call('LTRIM', key, 0, P_SPEC.hl - 1)
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

local P_FUNNEL_ORDER = { 'LEAD', 'MQL', 'SAL', 'SQL', 'OPPORTUNITY', 'CUSTOMER' }
local P_FUNNEL = {}
for i, stage in ipairs(P_FUNNEL_ORDER) do
  P_FUNNEL[stage] = i
end
local P_NO_TOUCH = { 'source=(none)', 'channel=(none)', 'campaign=(none)' }

-- The funnel groups of a lead: all leads, and its first touch (or none).
local function p_groups(f)
  if not f.ft then return { '*', P_NO_TOUCH[1], P_NO_TOUCH[2], P_NO_TOUCH[3] } end
  local touch = p_split(f.ft)
  return { '*', 'source=' .. touch[1], 'channel=' .. touch[2], 'campaign=' .. touch[3] }
end

-- Adds (sign 1) or takes back (-1) a funnel entry's counters for some
-- groups (FunnelEntry::increments); the day's counters expire
-- funnel_retention after the day.
local function p_count(day, groups, e, sign, now)
  local key = P_BASE .. 'funnel:' .. day
  for _, g in ipairs(groups) do
    redis.call('HINCRBY', key, g .. P_SEP .. 'e' .. P_SEP .. e.to, sign)
    redis.call('HINCRBY', key, g .. P_SEP .. 'd' .. P_SEP .. e.to .. P_SEP .. e.bucket, sign)
    for _, stage in ipairs(e.passed) do
      redis.call('HINCRBY', key, g .. P_SEP .. 'p' .. P_SEP .. stage, sign)
    end
    if e.reopened then redis.call('HINCRBY', key, g .. P_SEP .. 'r', sign) end
    if e.amount then
      redis.call('HINCRBY', key, g .. P_SEP .. 'w', sign)
      redis.call('HINCRBYFLOAT', key, g .. P_SEP .. 'v', string.format('%.17g', sign * e.amount))
    end
  end
  local ttl = (day + 1) * P_DAY + P_SPEC.fr - now
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
end

-- Funnel stages passed for the first time on entering `stage` (newly_passed).
local function p_passed(reached, stage)
  local passed = {}
  for r = reached + 1, P_FUNNEL[stage] or 0 do
    passed[#passed + 1] = P_FUNNEL_ORDER[r]
  end
  return passed
end

-- Counts the lead entering a stage in the funnel of the change's UTC day,
-- under its first touch. `change`: a stage change record (from, to, cause,
-- at, deal_amount); `now` dates the counters' expiry. A lead's creation
-- entry counted before its first signal is kept in `fe` (day␟stage), to
-- move under its first touch when that arrives.
local function p_enter(lead, f, change, now)
  local at = tonumber(change.at)
  if P_SPEC.q[change.to] and f.rq ~= '1' then
    redis.call('HSET', lead, 'rq', '1')
    f.rq = '1'
  end
  local passed = p_passed(tonumber(f.mr) or 0, change.to)
  if #passed > 0 then
    f.mr = tostring(P_FUNNEL[change.to])
    redis.call('HSET', lead, 'mr', f.mr)
  end
  local since = math.max(0, at - (tonumber(f.c) or at))
  local bucket = 0
  if since >= 1000 then bucket = math.floor(math.log(since / 1000) / math.log(1.1)) + 1 end
  local amount = change.deal_amount
  if type(amount) ~= 'number' then amount = nil end
  local e = {
    to = change.to,
    bucket = bucket,
    passed = passed,
    reopened = change.from == 'RECYCLED' and type(change.cause) == 'table' and change.cause.by == 'rule',
    amount = amount,
  }
  local day = math.floor(at / P_DAY)
  p_count(day, p_groups(f), e, 1, now)
  if change.created and not f.ft then
    f.fe = day .. P_SEP .. change.to
    redis.call('HSET', lead, 'fe', f.fe)
  end
end

-- Records the first touch if the signal at `at` is the lead's earliest,
-- and moves a creation entry counted before any touch under it.
local function p_first_touch(lead, f, values, at, now)
  if values == '' then return end
  local known = tonumber(f.fta)
  if known ~= nil and at >= known then return end
  local first = f.ft == nil
  f.ft, f.fta = values, string.format('%d', at)
  redis.call('HSET', lead, 'ft', f.ft, 'fta', f.fta)
  if first and f.fe then
    local parts = p_split(f.fe)
    local day, stage = tonumber(parts[1]), parts[2]
    local e = { to = stage, bucket = 0, passed = p_passed(0, stage) }
    local groups = p_groups(f)
    p_count(day, P_NO_TOUCH, e, -1, now)
    p_count(day, { groups[2], groups[3], groups[4] }, e, 1, now)
    redis.call('HDEL', lead, 'fe')
    f.fe = nil
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

