-- Creates an account or replaces its attributes; its qualification and
-- lead list are kept.
-- KEYS: 1 account hash
-- ARGV: attribute name, value pairs
-- Returns: 1
local account = KEYS[1]
for _, field in ipairs(redis.call('HKEYS', account)) do
  if string.sub(field, 1, 2) == 'a:' then
    redis.call('HDEL', account, field)
  end
end
redis.call('HSET', account, 'u', '1')
for i = 1, #ARGV, 2 do
  redis.call('HSET', account, 'a:' .. ARGV[i], ARGV[i + 1])
end
return 1
