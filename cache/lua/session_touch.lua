-- Check that a session is live, optionally slide its idle timeout, apply field changes.
-- KEYS[1]  the session hash (keys.session: session:{sessions}:<id>)
-- ARGV[1]  now, ms on the service clock
-- ARGV[2]  "1" to slide the idle timeout (last seen := now), "0" to leave it
-- ARGV[3]  "1" to return the whole hash, "0" to return 1
-- ARGV[4]  N, the number of field, value pairs that follow
-- ARGV[5]  most bytes of data fields (names plus values) the session may hold after the change
-- ARGV[6 .. 5+2N]  field, value pairs to set
-- ARGV[6+2N ..]    fields to delete
-- Returns false when the session is missing or expired (an expired one is deleted), -2
-- when the change would take the data over ARGV[5] bytes (nothing is written), else
-- the hash as a flat field, value array (ARGV[3] = "1") or 1.
-- Expiry rule (mirrors cache.sessions.core.expires_at_ms): a session lives until
-- min(last seen + idle TTL, absolute deadline); nothing moves the absolute deadline.
-- A hash with missing or malformed times is no session: it is deleted, nothing else written.
--#include _session_times
local h = redis.call('HMGET', KEYS[1], 'seen', 'idle', 'abs')
local now = tonumber(ARGV[1])
local seen, idle, abs = session_times(h[1], h[2], h[3])
if not seen or now >= math.min(seen + idle, abs) then
  redis.call('DEL', KEYS[1])
  return false
end
local n = tonumber(ARGV[4])
if n > 0 then
  -- The size the data would have: the new pairs plus every data field they leave alone.
  local size, changed = 0, {}
  for i = 6, 5 + 2 * n, 2 do
    changed[ARGV[i]] = true
    size = size + #ARGV[i] + #ARGV[i + 1]
  end
  for i = 6 + 2 * n, #ARGV do
    changed[ARGV[i]] = true
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
if ARGV[2] == '1' then
  -- A server whose clock lags must not move last-seen backwards.
  seen = math.max(seen, now)
  redis.call('HSET', KEYS[1], 'seen', seen)
  redis.call('PEXPIRE', KEYS[1], math.min(seen + idle, abs) - now)
end
if n > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + 2 * n))
end
if #ARGV > 5 + 2 * n then
  redis.call('HDEL', KEYS[1], unpack(ARGV, 6 + 2 * n))
end
if ARGV[3] == '1' then
  return redis.call('HGETALL', KEYS[1])
end
return 1
