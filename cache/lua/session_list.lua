-- Read a batch of one user's sessions, pruning dead ids from the index.
-- KEYS[1]   the user's index (session id -> absolute deadline ms)
-- KEYS[2..] session hashes, one per id in ARGV[3..], same order
-- ARGV[1]   now, ms on the service clock
-- ARGV[2]   user id
-- ARGV[3..] session ids
-- Returns a flat array: id, {field, value, ...}, id, {...} for each live session.
--#include _session_times
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  local h = redis.call('HMGET', KEYS[i], 'uid', 'seen', 'idle', 'abs')
  local mine = h[1] == ARGV[2]
  local seen, idle, abs = session_times(h[2], h[3], h[4])  -- malformed: not live, deleted
  local live = mine and seen and now < math.min(seen + idle, abs)
  if live then
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', KEYS[i])
  else
    if mine then
      redis.call('DEL', KEYS[i])
    end
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
