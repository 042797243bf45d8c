-- Sliding-log rate limit: trim, count, then admit or deny one request, atomically.
--
-- KEYS[1]  the log of one identifier under one policy (keys.rate_limit_log): a sorted
--          set with one member per admitted request, scored by its admission time (ms).
--          A member is "<total:%012x>:<cost>": the running total of admitted units
--          after this request (fixed-width hex, so ties in score sort by total) and the
--          request's own cost. Units in the window = newest total - (oldest total - oldest cost).
-- ARGV[1]  now in ms on the caller's clock, or "" to use the Redis server's clock (TIME)
-- ARGV[2]  window in ms (> 0): a request counts while now - window < its time <= now
-- ARGV[3]  limit: most units admitted in any window (>= 1)
-- ARGV[4]  cost of this request in units (1 .. limit)
--
-- Returns {allowed 1|0, units in the window after this request, retry after ms (0 when
-- allowed), reset after ms (until the window is empty and the whole limit is back)}.
-- Writes only when it admits (ZADD + PEXPIRE together) or trims expired members, so the
-- key always carries a TTL: it lives exactly as long as its newest member counts.
local key = KEYS[1]
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
if not (window and limit and cost) or window < 1 or cost < 1 or cost > limit then
  return redis.error_reply('ERR ratelimit: bad window/limit/cost ' .. ARGV[2] .. '/' .. ARGV[3] .. '/' .. ARGV[4])
end

local clock
if ARGV[1] == '' then
  local t = redis.call('TIME')
  clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  clock = tonumber(ARGV[1])
end

local function total_and_cost(member)
  local total, units = string.match(member, '^(%x+):(%d+)$')
  return tonumber(total, 16), tonumber(units)
end

-- Never record a request before the newest entry (clocks of several callers may
-- disagree by a little): recording it later keeps it counted longer, never shorter.
local now = clock
local total = 0
local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if newest[1] then
  total = total_and_cost(newest[1])
  local newest_at = tonumber(newest[2])
  if newest_at > now then
    now = newest_at
  end
end

redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
if not oldest[1] then
  total = 0 -- empty log: restart the running total, which keeps the numbers small
end
local base = total
if oldest[1] then
  local oldest_total, oldest_cost = total_and_cost(oldest[1])
  base = oldest_total - oldest_cost
end
local used = total - base

if used + cost <= limit then
  redis.call('ZADD', key, now, string.format('%012x:%d', total + cost, cost))
  redis.call('PEXPIRE', key, now + window - clock)
  return {1, used + cost, 0, now + window - clock}
end

-- Denied: the request fits once enough of the oldest units have left the window, i.e.
-- at the first member whose running total reaches base + need. Totals grow with rank,
-- so a binary search over ranks finds it in O(log^2 n).
local need = used + cost - limit
local lo, hi = 0, redis.call('ZCARD', key) - 1
local found
while lo <= hi do
  local mid = math.floor((lo + hi) / 2)
  local entry = redis.call('ZRANGE', key, mid, mid, 'WITHSCORES')
  if total_and_cost(entry[1]) - base >= need then
    found = tonumber(entry[2])
    hi = mid - 1
  else
    lo = mid + 1
  end
end
-- used > 0 here, so the newest member survived the trim.
return {0, used, found + window - clock, tonumber(newest[2]) + window - clock}
