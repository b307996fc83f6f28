-- Replaces hashes as a whole, for `leadscore migrate` (a cohort score
-- distribution rebuilt from the leads' records). Storage primitives only:
-- every key and value comes from the service; all keys of one call share a
-- hash slot (one partition).
--
-- KEYS: the hashes. ARGV: per key, its number of fields, then field/value
-- pairs. A key with no fields is removed.
local i = 1
for k = 1, #KEYS do
  redis.call('DEL', KEYS[k])
  local n = tonumber(ARGV[i])
  -- In slices: unpack is bounded by Lua's stack.
  for first = 1, n, 500 do
    local last = math.min(n, first + 499)
    redis.call('HSET', KEYS[k], unpack(ARGV, i + 2 * first - 1, i + 2 * last))
  end
  i = i + 1 + 2 * n
end
return #KEYS
