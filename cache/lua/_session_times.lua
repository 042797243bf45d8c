-- Included by the session_* scripts (`--#include _session_times`): a hash written by hand
-- must read as "no session", never as a script error (a 503 that lasts) nor as a bad
-- PEXPIRE after the first write. Times are whole ms of at most 14 digits, which Lua
-- prints exactly (1e+15 would not be an integer to PEXPIRE); the idle TTL is at most
-- MAX_TTL_S (366 days).
local MAX_MS, MAX_IDLE_MS = 99999999999999, 31622400000
local function stored_ms(v, lo, hi)
  if type(v) ~= 'string' or #v > 14 or not string.find(v, '^%d+$') then
    return nil
  end
  local n = tonumber(v)
  if n < lo or n > hi then
    return nil
  end
  return n
end
-- seen, idle TTL and absolute deadline as numbers, or nil when any is missing or malformed
local function session_times(seen, idle, abs)
  local s, i, a = stored_ms(seen, 0, MAX_MS), stored_ms(idle, 1, MAX_IDLE_MS), stored_ms(abs, 0, MAX_MS)
  if s and i and a then
    return s, i, a
  end
  return nil
end
