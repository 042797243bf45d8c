-- Move a live session to a new id in one step: the old id stops working at once.
-- KEYS[1]  the old session hash
-- KEYS[2]  the new session hash
-- KEYS[3..] its indexes (session id -> absolute deadline ms): the user's, then the IdP
--           session's and the IdP subject's when the session carries them
-- ARGV[1]  old id
-- ARGV[2]  new id
-- ARGV[3]  user id the caller read from the old hash
-- ARGV[4]  now, ms on the service clock
-- ARGV[5]  most bytes of data fields (names plus values) the session may hold after the changes
-- ARGV[6]  IdP sid the caller read from the old hash ('' when absent)
-- ARGV[7]  IdP sub the caller read from the old hash ('' when absent)
-- ARGV[8..] field, value pairs to set on the new session (data changes)
-- Returns 1 when rotated, 0 when the old session is missing, expired or not the one read,
-- -1 when the new id is taken (the caller draws another), -2 when the changes would take
-- the data over ARGV[5] bytes (nothing is written).
-- The absolute deadline and created-at move with the session: rotating is not a way
-- to live forever. Last seen becomes now and the idle timeout slides.
-- Every stored value is checked before the first write: a malformed session (bad times,
-- empty user) is destroyed like an expired one, never half-moved.
--#include _session_times
local h = redis.call('HMGET', KEYS[1], 'uid', 'seen', 'idle', 'abs', 'isid', 'isub')
if not h[1] or h[1] == '' or h[1] ~= ARGV[3]
  or (h[5] or '') ~= ARGV[6] or (h[6] or '') ~= ARGV[7] then
  return 0
end
local now = tonumber(ARGV[4])
local seen, idle, abs = session_times(h[2], h[3], h[4])
if not seen or now >= math.min(seen + idle, abs) then
  redis.call('DEL', KEYS[1])
  for i = 3, #KEYS do
    redis.call('ZREM', KEYS[i], ARGV[1])
  end
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
if #ARGV >= 9 then
  local size, changed = 0, {}
  for i = 8, #ARGV, 2 do
    changed[ARGV[i]] = true
    size = size + #ARGV[i] + #ARGV[i + 1]
  end
  for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(name, 1, 2) == 'd:' and not changed[name] then
      size = size + #name + redis.call('HSTRLEN', KEYS[1], name)
    end
  end
  if size > tonumber(ARGV[5]) then
    return -2
  end
end
redis.call('RENAME', KEYS[1], KEYS[2])
seen = math.max(seen, now)
redis.call('HSET', KEYS[2], 'seen', seen)
if #ARGV >= 9 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 8))
end
redis.call('PEXPIRE', KEYS[2], math.min(seen + idle, abs) - now)
for i = 3, #KEYS do
  -- Add before removing: removing the last member first would delete the index and its TTL.
  redis.call('ZADD', KEYS[i], h[4], ARGV[2])
  redis.call('ZREM', KEYS[i], ARGV[1])
  if redis.call('PTTL', KEYS[i]) < abs - now then
    redis.call('PEXPIRE', KEYS[i], abs - now)
  end
end
return 1
