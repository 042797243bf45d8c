-- Sliding-log rate limit: trim, count, then admit or deny one request, atomically.
--
-- KEYS[1]  the log of one identifier under one policy (keys.rate_limit_log): a sorted
--          set with one member per admission (or per resolution step, see ARGV[5]),
--          scored by the time of its latest admission in ms. A member is
--          "<total>:<units>:<age>": the running total of admitted units after it, as 12
--          hex digits (fixed width, so members of one score sort by total), the units
--          it holds, and how many ms before its score its first admission was.
--          Units in the window = newest total - (oldest total - oldest units).
-- ARGV[1]  now in ms on the caller's clock, or "" to use the Redis server's clock (TIME)
-- ARGV[2]  window in ms (> 0): a member counts while now - window < its time <= now
-- ARGV[3]  limit: most units admitted in any window (>= 1)
-- ARGV[4]  cost of this request in units (1 .. limit)
-- ARGV[5]  resolution in ms (1 .. window): an admission less than this after the first
--          admission of the newest member joins it, and the member moves to now (later,
--          never earlier: its units are held back at most `resolution` ms too long).
--          1 is exact (only admissions of the same millisecond share a member); larger
--          values bound the log to about window / resolution members.
--
-- Returns {allowed 1|0, units in the window after this request, retry after ms (0 when
-- allowed), reset after ms (until the window is empty and the whole limit is back)}.
-- Writes only when it admits (ZADD + PEXPIRE together) or trims expired members, so the
-- key always carries a TTL: it lives exactly as long as its newest member counts.
local key = KEYS[1]
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local resolution = tonumber(ARGV[5])
if not (window and limit and cost and resolution) or window < 1 or cost < 1 or cost > limit
    or resolution < 1 or resolution > window then
  return redis.error_reply('ERR ratelimit: bad window/limit/cost/resolution '
    .. table.concat(ARGV, '/', 2, 5))
end

local clock
if ARGV[1] == '' then
  local t = redis.call('TIME')
  clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  clock = tonumber(ARGV[1])
end

local function parse(member)
  local total, units, age = string.match(member, '^(%x+):(%d+):(%d+)$')
  return tonumber(total, 16), tonumber(units), tonumber(age)
end

-- Never record a request before the newest member (the clocks of several callers may
-- disagree a little): recording it later keeps it counted longer, never shorter.
local now = clock
local total = 0
local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local newest_at
if newest[1] then
  total = parse(newest[1])
  newest_at = tonumber(newest[2])
  if newest_at > now then
    now = newest_at
  end
end

-- Trim members that left the window, but only when there are any: each redis.call
-- costs about a microsecond, and on a busy key the oldest member is usually still in.
local oldest = {}
if newest[1] then
  if newest_at <= now - window then
    redis.call('DEL', key) -- everything left the window
  else
    oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if tonumber(oldest[2]) <= now - window then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
      oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    end
  end
end
local base, oldest_cost = 0, 0
if oldest[1] then
  local oldest_total
  oldest_total, oldest_cost = parse(oldest[1])
  base = oldest_total - oldest_cost
else
  total = 0 -- empty log: restart the running total, which keeps the numbers small
end
local used = total - base

if used + cost <= limit then
  local units, age = cost, 0
  if oldest[1] then -- the log is not empty, so the newest member survived the trim
    local _, newest_units, newest_age = parse(newest[1])
    local first_at = newest_at - newest_age
    if now - first_at < resolution then
      units, age = units + newest_units, now - first_at
      redis.call('ZREM', key, newest[1])
    end
  end
  redis.call('ZADD', key, now, string.format('%012x:%d:%d', total + cost, units, age))
  redis.call('PEXPIRE', key, now + window - clock)
  return {1, used + cost, 0, now + window - clock}
end

-- Denied (so used > 0 and the newest member survived the trim). The request fits once
-- `need` units have left the window: at the first member whose running total reaches
-- base + need. Usually the oldest; otherwise a binary search over ranks, O(log^2 n).
local need = used + cost - limit
local found = tonumber(oldest[2])
if oldest_cost < need then
  local lo, hi = 1, redis.call('ZCARD', key) - 1
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    local entry = redis.call('ZRANGE', key, mid, mid, 'WITHSCORES')
    if parse(entry[1]) - base >= need then
      found = tonumber(entry[2])
      hi = mid - 1
    else
      lo = mid + 1
    end
  end
end
return {0, used, found + window - clock, newest_at + window - clock}
