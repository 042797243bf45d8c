-- Write an entry under the namespace's current generation and void any fill in flight.
--
-- KEYS[1]  namespace generation
-- KEYS[2]  the entry
-- KEYS[3]  the fill lease of the entry (deleted: an explicit set wins over a fetch in flight)
-- ARGV[1]  token to install as generation when the namespace has none yet
-- ARGV[2]  JSON envelope
-- ARGV[3]  time to live of the entry, milliseconds
--
-- Returns 1.

local generation = redis.call('GET', KEYS[1])
if not generation then
  redis.call('SET', KEYS[1], ARGV[1])
  generation = ARGV[1]
end
redis.call('SET', KEYS[2], generation .. ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
return 1
