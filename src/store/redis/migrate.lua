-- Replaces leads kept in layout format 1 (a hash and five side keys) by
-- their format-2 records, for `leadscore migrate`. Storage primitives only:
-- every key and value comes from the service (src/store/redis/migrate.rs,
-- keys.rs); all keys of one call share a hash slot (one partition).
--
-- KEYS: per lead, its key then its five format-1 side keys.
-- ARGV: per lead, its new value (version and record).
-- A lead key that is no longer a hash (converted by an earlier run) is
-- left alone. Returns how many leads were written.
local written = 0
for i = 1, #ARGV do
  local k = (i - 1) * 6
  if redis.call('TYPE', KEYS[k + 1]).ok == 'hash' then
    redis.call('DEL', KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6])
    redis.call('SET', KEYS[k + 1], ARGV[i])
    written = written + 1
  end
end
return written
