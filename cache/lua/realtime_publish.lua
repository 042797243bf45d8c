-- Append one event to its channel's capped stream and publish it, atomically.
--
-- KEYS[1]  the channel's event stream (keys.event_stream(channel))
-- ARGV[1]  the pub/sub channel (a channel is not a key: PUBLISH reaches every node)
-- ARGV[2]  MAXLEN: the stream is trimmed to about this many entries (XADD MAXLEN ~)
-- ARGV[3]  TTL of the stream in milliseconds, renewed on every event
-- ARGV[4]  the envelope body: a JSON object without "id", starting with '{"event"'
--
-- Returns: the new stream id, which is also the event id inside the published
-- envelope, so a subscriber can dedupe live messages against a replay.
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'body', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
-- The same splice as realtime_envelope.envelope_from_body: the id becomes the first field.
redis.call('PUBLISH', ARGV[1], '{"id":"' .. id .. '",' .. string.sub(ARGV[4], 2))
return id
