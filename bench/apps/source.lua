-- An upstream event stream for bench/outbound.sh: GET /events?hz=H&secs=S
-- sends H events a second for S seconds, each carrying its send time
-- (monotonic ns) as data, as the pub/sub benchmark's publisher does.
local sluice = require "sluice"
sluice.configure { heartbeat = 0 }
sluice.get("/events", function(req)
  local hz, secs = tonumber(req.query.hz) or 10, tonumber(req.query.secs) or 10
  return sluice.stream(coroutine.wrap(function()
    local stop_at, next_at = sluice.now() + secs, sluice.now()
    while sluice.now() < stop_at do
      coroutine.yield(string.format("%.0f", sluice.now() * 1e9))
      next_at = next_at + 1 / hz
      local wait = next_at - sluice.now()
      if wait > 0 then sluice.sleep(wait) end
    end
  end))
end)
sluice.get("/health", function() return sluice.response(200, "ok") end)
