-- Destroy one session and drop it from its user's index, atomically.
-- KEYS[1]  the session hash
-- KEYS[2]  the user's index (session id -> absolute deadline ms)
-- ARGV[1]  session id
-- ARGV[2]  user id the caller read from the hash
-- ARGV[3]  now, ms on the service clock
-- Returns 1 when a live session was destroyed, else 0.
redis.call('ZREM', KEYS[2], ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'uid', 'seen', 'idle', 'abs')
if not h[1] or h[1] ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1])
if not (h[2] and h[3] and h[4]) then
  return 0
end
if tonumber(ARGV[3]) >= math.min(tonumber(h[2]) + tonumber(h[3]), tonumber(h[4])) then
  return 0
end
return 1
