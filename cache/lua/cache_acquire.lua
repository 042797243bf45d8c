-- Read a cache entry and, when asked, take the fill lease for it in the same step.
--
-- KEYS[1]  namespace generation (a random token; `clear()` replaces it)
-- KEYS[2]  the entry (its value starts with the generation it was written under)
-- KEYS[3]  the fill lease of the entry
-- ARGV[1]  token to install as generation when the namespace has none yet
-- ARGV[2]  our lease token
-- ARGV[3]  lease time to live, milliseconds
-- ARGV[4]  "missing": take the lease only when there is no entry of the current
--          generation (a cold miss); "always": take it if free (refresh of a stale entry)
--
-- Returns {generation, entry or false, 1 if the lease is now ours else 0}.

local generation = redis.call('GET', KEYS[1])
if not generation then
  redis.call('SET', KEYS[1], ARGV[1])
  generation = ARGV[1]
end

local entry = redis.call('GET', KEYS[2])
local current = entry and string.sub(entry, 1, string.len(generation)) == generation

local taken = 0
if ARGV[4] == 'always' or not current then
  if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then
    taken = 1
  end
end
return {generation, entry or false, taken}
