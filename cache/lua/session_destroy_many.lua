-- Destroy a batch of sessions found through one index and drop them from every index, atomically.
-- KEYS[1]   the index the batch was read from (user, IdP session or IdP subject)
-- KEYS[2..] per session: its hash, then the ARGV-given number of its index keys
-- ARGV[1]   now, ms on the service clock
-- ARGV[2..] per session, five values: id, user id, IdP sid, IdP sub (as the caller read
--           them from the hash; '' when absent) and how many index keys follow its hash
-- A session is destroyed only when its hash still holds the owners the caller read
-- (a gone or replaced hash is left alone); its id leaves every index either way, since
-- ids are never reused.
-- Returns {live sessions destroyed, ids still in KEYS[1]}; the caller repeats while
-- ids remain, so a session created or rotated meanwhile is caught too.
--#include _session_times
local now = tonumber(ARGV[1])
local destroyed, k = 0, 2
for i = 2, #ARGV, 5 do
  local id, n = ARGV[i], tonumber(ARGV[i + 4])
  local h = redis.call('HMGET', KEYS[k], 'uid', 'seen', 'idle', 'abs', 'isid', 'isub')
  if h[1] and h[1] == ARGV[i + 1] and (h[5] or '') == ARGV[i + 2] and (h[6] or '') == ARGV[i + 3] then
    local seen, idle, abs = session_times(h[2], h[3], h[4])  -- malformed: deleted, not counted
    if seen and now < math.min(seen + idle, abs) then
      destroyed = destroyed + 1
    end
    redis.call('DEL', KEYS[k])
  end
  for j = k + 1, k + n do
    redis.call('ZREM', KEYS[j], id)
  end
  redis.call('ZREM', KEYS[1], id)
  k = k + 1 + n
end
return {destroyed, redis.call('ZCARD', KEYS[1])}
