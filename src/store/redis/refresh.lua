-- Brings a lead's stored fit scores and its cohort aggregates up to the
-- active rule set (after a rule change), with a score history entry when
-- a fit changed.
-- KEYS: 1 lead hash
-- ARGV: now ms, lead id, number of models N, N × (model, fit score)
-- Returns: 1, or 0 for no such lead
local lead = KEYS[1]
if redis.call('EXISTS', lead) == 0 then return 0 end
local now = tonumber(ARGV[1])
local f = p_fields(lead)
local defaults = {}
for _, m in ipairs(P_SPEC.m) do
  defaults['f:' .. m.n] = m.f
end
local fits = {}
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  fits['f:' .. ARGV[i]] = ARGV[i + 1]
  i = i + 2
end
local changed = false
for field in pairs(f) do
  if string.sub(field, 1, 2) == 'f:' and not fits[field] then
    redis.call('HDEL', lead, field)
    f[field] = nil
  end
end
for field, value in pairs(fits) do
  local old = tonumber(f[field]) or defaults[field]
  if old ~= tonumber(value) then changed = true end
  redis.call('HSET', lead, field, value)
  f[field] = value
end
local scores = p_scores(f, now)
p_register(lead, ARGV[2], f, scores)
if changed then p_history(lead, scores, now, 'rescore:' .. P_SPEC.v, true) end
return 1
