-- Writes lead changes the service computed, each only if its lead is still
-- at the version it was read at (compare-and-set). Storage primitives only:
-- no rule is evaluated and no key name is built here; every key comes from
-- the service (src/store/redis/keys.rs) by its index in KEYS. All keys of
-- one call share a hash slot (one partition).
--
-- ARGV: number of leads, then per lead:
--   record key index, the value's expected first 16 bytes (its version; ''
--   for a lead that must not exist), the new value ('' deletes the record),
--   number of operations, then the operations, each a code and arguments
--   (k = a KEYS index):
--     F k field by          HINCRBYFLOAT; the field goes when it is 0 (a
--                           sum of amounts that are not whole may keep a
--                           float residue instead)
--     I k field by          HINCRBY; the field goes when it is 0
--     A k unix ms           PEXPIREAT
--     Z k score member      ZADD
--     R k member            ZREM
--     X k keep_ms n f v …   XADD with n field/value pairs, trimming entries
--                           older than keep_ms by Redis' clock (MINID ~)
--     L k tag keep_ms f t   LPUSH tag .. the id the last X added to list k,
--                           dropping its entries older than keep_ms that
--                           stream f (tag 'f') or t (tag 't') no longer holds
--     E k f t               XDEL every id list k holds from stream f (tag
--                           'f') or t (tag 't'), then DEL k
-- Returns per lead: { 0 } the lead changed (nothing of it written), or
--   { 1, the XADD ids in order }
-- Redis' clock in unix ms, read once and only by a call that appends.
local redis_now
local function now_ms()
  if not redis_now then
    local time = redis.call('TIME')
    redis_now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  end
  return redis_now
end

-- Entries older than `keep_ms` by Redis' clock: the unix ms before which
-- a stream (and a lead's list of its entries) drops them.
local function cutoff(keep_ms)
  return now_ms() - tonumber(keep_ms)
end

-- The index of the argument after the operation at `i`.
local function skip(i)
  local op = ARGV[i]
  if op == 'X' then return i + 4 + 2 * tonumber(ARGV[i + 3]) end
  if op == 'F' or op == 'I' or op == 'Z' or op == 'E' then return i + 4 end
  if op == 'L' then return i + 6 end
  if op == 'A' or op == 'R' then return i + 3 end
  return nil
end

-- First every check, then every write: a record key of another type or an
-- unknown operation stops the call before anything is written. (Redis does
-- not roll back a script: an aggregate key of another type — only ever
-- planted by hand — fails the call after the writes before it.)
local leads = tonumber(ARGV[1])
local starts, writes = {}, {}
local i = 2
for lead = 1, leads do
  starts[lead] = i
  local current = redis.pcall('GETRANGE', KEYS[tonumber(ARGV[i])], 0, 15)
  if type(current) == 'table' and current.err then
    return redis.error_reply('apply.lua: lead record ' .. KEYS[tonumber(ARGV[i])] .. ': ' .. current.err)
  end
  writes[lead] = current == ARGV[i + 1]
  local n = tonumber(ARGV[i + 3])
  i = i + 4
  for _ = 1, n do
    local next_i = skip(i)
    if not next_i then
      return redis.error_reply('apply.lua: unknown operation ' .. tostring(ARGV[i]))
    end
    i = next_i
  end
end

local out = {}
for lead = 1, leads do
  i = starts[lead]
  local write = writes[lead]
  local n = tonumber(ARGV[i + 3])
  local ids = { 1 }
  if write then
    if ARGV[i + 2] == '' then
      redis.call('DEL', KEYS[tonumber(ARGV[i])])
    else
      redis.call('SET', KEYS[tonumber(ARGV[i])], ARGV[i + 2])
    end
  end
  local last_id
  i = i + 4
  for _ = 1, n do
    local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
    if write then
      if op == 'X' then
        local min = string.format('%d', cutoff(ARGV[i + 2]))
        local args = { 'XADD', key, 'MINID', '~', min, '*' }
        for p = 1, 2 * tonumber(ARGV[i + 3]) do
          args[#args + 1] = ARGV[i + 3 + p]
        end
        last_id = redis.call(unpack(args))
        ids[#ids + 1] = last_id
      elseif op == 'F' then
        if tonumber(redis.call('HINCRBYFLOAT', key, ARGV[i + 2], ARGV[i + 3])) == 0 then
          redis.call('HDEL', key, ARGV[i + 2])
        end
      elseif op == 'I' then
        if redis.call('HINCRBY', key, ARGV[i + 2], ARGV[i + 3]) == 0 then
          redis.call('HDEL', key, ARGV[i + 2])
        end
      elseif op == 'L' then
        redis.call('LPUSH', key, ARGV[i + 2] .. last_id)
        local oldest = cutoff(ARGV[i + 3])
        local streams = { f = KEYS[tonumber(ARGV[i + 4])], t = KEYS[tonumber(ARGV[i + 5])] }
        -- A few per call: the list shrinks as fast as it grows. An id goes
        -- only once its stream trimmed it (trimming is approximate).
        for _ = 1, 4 do
          local tail = redis.call('LINDEX', key, -1)
          local ms = tail and tonumber(string.match(tail, '^.(%d+)'))
          if not ms or ms >= oldest then break end
          local stream = streams[string.sub(tail, 1, 1)]
          local id = string.sub(tail, 2)
          if stream and #redis.call('XRANGE', stream, id, id) > 0 then break end
          redis.call('RPOP', key)
        end
      elseif op == 'E' then
        local streams = { f = KEYS[tonumber(ARGV[i + 2])], t = KEYS[tonumber(ARGV[i + 3])] }
        -- Deleted triggers also leave every consumer group's pending list.
        local groups = redis.pcall('XINFO', 'GROUPS', streams.t)
        if type(groups) ~= 'table' or groups.err then groups = {} end
        for _, entry in ipairs(redis.call('LRANGE', key, 0, -1)) do
          local tag, id = string.sub(entry, 1, 1), string.sub(entry, 2)
          local stream = streams[tag]
          if stream then redis.call('XDEL', stream, id) end
          if tag == 't' then
            for _, g in ipairs(groups) do
              for f = 1, #g, 2 do
                if g[f] == 'name' then redis.call('XACK', streams.t, g[f + 1], id) end
              end
            end
          end
        end
        redis.call('DEL', key)
      elseif op == 'Z' then
        redis.call('ZADD', key, ARGV[i + 2], ARGV[i + 3])
      elseif op == 'A' then
        redis.call('PEXPIREAT', key, ARGV[i + 2])
      elseif op == 'R' then
        redis.call('ZREM', key, ARGV[i + 2])
      end
    end
    i = skip(i)
  end
  out[lead] = write and ids or { 0 }
end
return out
