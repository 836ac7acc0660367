-- clock.lua: a stream generator that resumes where the client left off.
--
-- Each second the generator yields one event whose id is its sequence number.
-- When the connection drops, the browser's EventSource reconnects with a
-- Last-Event-ID header, and the generator starts after that id: no tick is
-- missed or repeated. After 60 ticks the stream ends (the browser reconnects
-- and resumes; a client that already has all 60 gets 204, which tells
-- EventSource to stop).
--
-- Run:   ./build/sluice examples/clock.lua
-- Try:   curl -N http://127.0.0.1:8080/clock
--        curl -N -H 'Last-Event-ID: 55' http://127.0.0.1:8080/clock
local sluice = require "sluice"

sluice.configure { retry = 1000 } -- reconnect after one second

local LAST = 60

sluice.get("/clock", function(req)
  local from = (tonumber(req.last_event_id) or 0) + 1
  if from > LAST then return nil end -- 204: EventSource stops reconnecting
  return coroutine.wrap(function()
    for i = from, LAST do
      coroutine.yield(sluice.message({ tick = i, time = os.date("!%H:%M:%S") }, { id = i, event = "tick" }))
      sluice.sleep(1) -- suspends this stream only; the gateway goes on
    end
  end)
end)

sluice.get("/health", function() return sluice.response(200, "ok") end)
