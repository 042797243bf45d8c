-- Destroy a batch of one user's sessions and drop them from the index, atomically.
-- KEYS[1]   the user's index (session id -> absolute deadline ms)
-- KEYS[2..] session hashes, one per id in ARGV[3..], same order
-- ARGV[1]   now, ms on the service clock
-- ARGV[2]   user id
-- ARGV[3..] session ids
-- Returns {live sessions destroyed, ids still in the index}; the caller repeats while
-- ids remain, so a session created during "log out everywhere" is caught too.
local now = tonumber(ARGV[1])
local destroyed = 0
for i = 2, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'uid', 'seen', 'idle', 'abs')
  if h[1] == ARGV[2] then
    if h[2] and h[3] and h[4]
      and now < math.min(tonumber(h[2]) + tonumber(h[3]), tonumber(h[4])) then
      destroyed = destroyed + 1
    end
    redis.call('DEL', KEYS[i])
  end
  redis.call('ZREM', KEYS[1], ARGV[i + 1])
end
return {destroyed, redis.call('ZCARD', KEYS[1])}
