-- Writes lead changes the service computed, each only if its lead is still
-- at the version it was read at (compare-and-set). Storage primitives only:
-- no rule is evaluated and no key name is built here; every key comes from
-- the service (src/store/redis/keys.rs) by its index in KEYS. All keys of
-- one call share a hash slot (one partition).
--
-- ARGV: number of leads, then per lead:
--   record key index, expected version (0: must not exist), record bytes,
--   number of operations, then the operations, each a code and arguments
--   (k = a KEYS index):
--     F k field by          HINCRBYFLOAT
--     I k field by          HINCRBY
--     A k unix ms           PEXPIREAT
--     Z k score member      ZADD
--     R k member            ZREM
--     X k keep_ms n f v …   XADD with n field/value pairs, trimming entries
--                           older than keep_ms by Redis' clock (MINID ~)
--     L k value keep ttl_ms LPUSH, LTRIM to keep, PEXPIRE
-- Returns per lead: { 0 } the lead changed (nothing of it written), or
--   { 1, the XADD ids in order }
local time = redis.call('TIME')
local redis_now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local out = {}
local i = 2
for lead = 1, tonumber(ARGV[1]) do
  local record = KEYS[tonumber(ARGV[i])]
  local expected = ARGV[i + 1]
  local bytes = ARGV[i + 2]
  local n = tonumber(ARGV[i + 3])
  i = i + 4
  local current = redis.call('HGET', record, 'v') or '0'
  local write = current == expected
  local ids = { 1 }
  if write then
    redis.call('HSET', record, 'v', tostring(tonumber(expected) + 1), 'd', bytes)
  end
  for _ = 1, n do
    local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
    if op == 'X' then
      local pairs_n = tonumber(ARGV[i + 3])
      if write then
        local min = string.format('%d', redis_now - tonumber(ARGV[i + 2]))
        local args = { 'XADD', key, 'MINID', '~', min, '*' }
        for p = 1, 2 * pairs_n do
          args[#args + 1] = ARGV[i + 3 + p]
        end
        ids[#ids + 1] = redis.call(unpack(args))
      end
      i = i + 4 + 2 * pairs_n
    elseif op == 'L' then
      if write then
        redis.call('LPUSH', key, ARGV[i + 2])
        redis.call('LTRIM', key, 0, tonumber(ARGV[i + 3]) - 1)
        redis.call('PEXPIRE', key, ARGV[i + 4])
      end
      i = i + 5
    elseif op == 'F' or op == 'I' or op == 'Z' then
      if write then
        local cmd = ({ F = 'HINCRBYFLOAT', I = 'HINCRBY', Z = 'ZADD' })[op]
        redis.call(cmd, key, ARGV[i + 2], ARGV[i + 3])
      end
      i = i + 4
    elseif op == 'A' or op == 'R' then
      if write then
        redis.call(op == 'A' and 'PEXPIREAT' or 'ZREM', key, ARGV[i + 2])
      end
      i = i + 3
    else
      return redis.error_reply('apply.lua: unknown operation ' .. tostring(op))
    end
  end
  out[lead] = write and ids or { 0 }
end
return out
