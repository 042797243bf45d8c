-- Write a fetched value, but only while the writer still holds the fill lease, then
-- release the lease. An invalidation (delete, set) removes the lease, and a lease that
-- expired may be held by another caller now: in both cases the value may be older than
-- what the cache should hold, so it is dropped.
--
-- KEYS[1]  the fill lease
-- KEYS[2]  the entry
-- ARGV[1]  our lease token
-- ARGV[2]  payload (generation + JSON envelope)
-- ARGV[3]  time to live of the entry, milliseconds
--
-- Returns 1 when written, 0 when the lease was lost and nothing was written.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
return 1
