-- Marks an anonymous visitor as identified as a lead; from then on the
-- ingest script refuses the visitor's signals and names the lead instead.
-- KEYS: 1 the visitor's hash
-- ARGV: lead id
-- Returns: { 1, '' } marked (or already marked as this lead),
--          { -1, other lead id } identified as another lead before,
--          { 0, '' } no such visitor
local visitor = KEYS[1]
if redis.call('EXISTS', visitor) == 0 then
  return { 0, '' }
end
local owner = redis.call('HGET', visitor, 'mi')
if owner and owner ~= ARGV[1] then
  return { -1, owner }
end
redis.call('HSET', visitor, 'mi', ARGV[1])
return { 1, '' }
