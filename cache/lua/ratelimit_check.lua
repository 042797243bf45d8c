-- Sliding-log rate limit: count the window, then admit or deny one request, atomically.
--
-- KEYS[1]  the log of one identifier under one policy (keys.rate_limit_log): a sorted
--          set with one member per admission (or per resolution step, see ARGV[5]),
--          scored by the time of its latest admission in ms. A member is
--          "<total>:<units>:<age>:<used>:<span>:<ttl>", all hex:
--            total  running total of admitted units after it; 12 digits, fixed width,
--                   so that members of one score sort by it (the newest sorts last)
--            units  the units it holds
--            age    ms from its first admission to its score (resolution merges)
--            used   units in the window right after it was written
--            span   ms from the oldest member at that moment to its score
--            ttl    ms from its score to the key's expiry as last set
--          Units in the window = total - (oldest total - oldest units). The newest
--          member alone answers that while nothing left the window since it was
--          written (score - span > now - window): the hot path reads one member.
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
-- Writes only when it admits or trims members that left the window. The key always
-- has a TTL: an admission that finds less than one window left sets it to two windows,
-- so a key lives one to two windows after its last admission, and PEXPIRE runs about
-- once per window instead of once per request.
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

local function head(member) -- total and units
  local total, units = string.match(member, '^(%x+):(%x+):')
  return tonumber(total, 16), tonumber(units, 16)
end

-- Never record a request before the newest member (the clocks of several callers may
-- disagree a little): recording it later keeps it counted longer, never shorter.
local now = clock
local total, used = 0, 0
local newest_at, newest_units, newest_first_at, oldest_at, ttl_end, oldest
local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if newest[1] then
  local t, u, a, w, s, e = string.match(newest[1], '^(%x+):(%x+):(%x+):(%x+):(%x+):(%x+)$')
  newest_at = tonumber(newest[2])
  total, newest_units, used = tonumber(t, 16), tonumber(u, 16), tonumber(w, 16)
  newest_first_at = newest_at - tonumber(a, 16)
  oldest_at, ttl_end = newest_at - tonumber(s, 16), newest_at + tonumber(e, 16)
  if newest_at > now then
    now = newest_at
  end
  local cutoff = now - window
  if newest_at <= cutoff then
    -- everything left the window: start afresh (the running total restarts too)
    redis.call('DEL', key)
    total, used, newest_at, oldest_at, ttl_end = 0, 0, nil, nil, nil
  elseif oldest_at <= cutoff then
    -- some members left: trim them and count from the new oldest (the newest survives)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
    oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local oldest_total, oldest_units = head(oldest[1])
    used = total - (oldest_total - oldest_units)
    oldest_at = tonumber(oldest[2])
  end
end

if used + cost <= limit then
  local units, age = cost, 0
  local merge = newest_at and now - newest_first_at < resolution
  if merge then
    units, age = newest_units + cost, now - newest_first_at
  end
  -- Scores are unique (a new member always starts after the newest), so the newest
  -- member is also the oldest exactly when their times agree.
  if not oldest_at or (merge and oldest_at == newest_at) then
    oldest_at = now
  end
  local refresh = not ttl_end or ttl_end < now + window
  if refresh then
    ttl_end = now + 2 * window
  end
  redis.call('ZADD', key, now, string.format('%012x:%x:%x:%x:%x:%x',
    total + cost, units, age, used + cost, now - oldest_at, ttl_end - now))
  if merge then
    redis.call('ZREM', key, newest[1]) -- after the ZADD, so the key never empties
  end
  if refresh then
    redis.call('PEXPIRE', key, ttl_end - clock)
  end
  return {1, used + cost, 0, now + window - clock}
end

-- Denied (so used > 0 and the log is not empty). The request fits once `need` units
-- have left the window: at the first member whose running total reaches base + need.
-- Usually the oldest; otherwise a binary search over ranks, O(log^2 n).
local need = used + cost - limit
if not oldest then
  oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
end
local oldest_total, oldest_units = head(oldest[1])
local base = oldest_total - oldest_units
local found = tonumber(oldest[2])
if oldest_units < need then
  local lo, hi = 1, redis.call('ZCARD', key) - 1
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    local entry = redis.call('ZRANGE', key, mid, mid, 'WITHSCORES')
    if head(entry[1]) - base >= need then
      found = tonumber(entry[2])
      hi = mid - 1
    else
      lo = mid + 1
    end
  end
end
return {0, used, found + window - clock, newest_at + window - clock}
