-- Create one session and add it to each of its indexes, atomically.
-- KEYS[1]   the session hash (keys.session: session:{sessions}:<id>)
-- KEYS[2..] its indexes: the user's, then the IdP session's and the IdP subject's when
--           the session carries them; sorted sets of session ids scored by absolute deadline (ms)
-- ARGV[1]   session id
-- ARGV[2]   now, ms on the service clock
-- ARGV[3]   absolute deadline, ms
-- ARGV[4]   key TTL, ms: min(idle deadline, absolute deadline) - now
-- ARGV[5..] field, value pairs of the hash
-- Returns 1 when created, 0 when the id is taken (the caller draws a new one).
-- An index entry scored past any deadline we write (a hand-written or corrupt score) is
-- dropped first, so it can never make the index's PEXPIRE fail after the HSET.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local now = tonumber(ARGV[2])
for i = 2, #KEYS do
  -- Ids past their absolute deadline can never come back: drop them while we are here.
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '(99999999999999', '+inf')
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[3], ARGV[1])
  -- An index lives as long as its longest-lived session, so it never outlives them all.
  local last = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[i], math.max(1, math.ceil(tonumber(last[2]) - now)))
end
return 1
