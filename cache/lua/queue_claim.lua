-- Claim up to a number of job ids from each of several RQ queues, in the worker's order.
-- KEYS[2i-1]  queue list i (rq:queue:<name>); KEYS[2i] its intermediate list (<queue>:intermediate)
-- ARGV[i]     most ids to claim from queue i (0: none)
-- Each id moves from the head of its queue to the tail of the queue's intermediate list,
-- exactly as RQ's BLMOVE dequeue does: a worker that dies before it registers the job
-- leaves the id there, where crash recovery finds it. One call, however many ids.
-- Returns a flat array: queue index (1-based), id, queue index, id, ...
local claimed = {}
for i = 1, #ARGV do
  local queue, intermediate = KEYS[2 * i - 1], KEYS[2 * i]
  for _ = 1, tonumber(ARGV[i]) do
    local id = redis.call('LMOVE', queue, intermediate, 'LEFT', 'RIGHT')
    if not id then
      break
    end
    claimed[#claimed + 1] = i
    claimed[#claimed + 1] = id
  end
end
return claimed
