-- Run a batch of single-key writes as one atomic step, unless a guard key exists.
-- The worker builds the batch with RQ's own bookkeeping code (workers/bookkeeping.py).
-- KEYS: the guard keys (ARGV[1] of them), then the key of each command, in order.
-- ARGV[1]: the number of guard keys; then, per command: its name, its argument count n,
--          and its n arguments (after the key).
-- Returns: 1 when the batch ran, 0 when a guard key exists (then nothing was written).
local guards = tonumber(ARGV[1])
if guards > 0 and redis.call('EXISTS', unpack(KEYS, 1, guards)) > 0 then
  return 0
end
local at = 2
for index = guards + 1, #KEYS do
  local count = tonumber(ARGV[at + 1])
  redis.call(ARGV[at], KEYS[index], unpack(ARGV, at + 2, at + 1 + count))
  at = at + 2 + count
end
return 1
