-- clock.lua: a stream generator that resumes where the client left off.
--
-- Each tick is an event whose id is its sequence number. To show resumption,
-- each response carries at most five ticks and then ends; the browser's
-- EventSource reconnects after `retry` (one second) with a Last-Event-ID
-- header, and the next response starts after that id: no tick is missed or
-- repeated. After tick 60 a reconnect gets 204, which tells EventSource to stop.
--
-- Run:   ./build/sluice examples/clock.lua
-- Try:   curl -N http://127.0.0.1:8080/clock                       (ticks 1-5, then the stream ends)
--        curl -N -H 'Last-Event-ID: 55' http://127.0.0.1:8080/clock (ticks 56-60)
--        open http://127.0.0.1:8080/ in a browser: the ticks run on across reconnects
-- ?interval=SECONDS sets the time between ticks (default 1).
local sluice = require "sluice"

sluice.configure { retry = 1000 } -- EventSource reconnects after one second

local LAST, PER_RESPONSE = 60, 5

sluice.get("/clock", function(req)
  local from = (tonumber(req.last_event_id) or 0) + 1
  if from > LAST then return nil end -- 204: EventSource stops reconnecting
  local interval = math.max(0.05, math.min(tonumber(req.query.interval) or 1, 60))
  return coroutine.wrap(function()
    for i = from, math.min(from + PER_RESPONSE - 1, LAST) do
      coroutine.yield(sluice.message({ tick = i, time = os.date("!%H:%M:%S") }, { id = i, event = "tick" }))
      sluice.sleep(interval) -- suspends this stream only; the gateway goes on
    end
  end)
end)

sluice.get("/health", function() return sluice.response(200, "ok") end)

-- The web page (examples/pages/clock) and the stylesheet the pages share.
sluice.static("/assets", "pages/assets")
sluice.static("/", "pages/clock")
