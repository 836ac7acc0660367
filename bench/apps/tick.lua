-- A generator per connection that ticks every second: the stream-mode benchmark's app.
-- GET /sent: how many events the generators have yielded so far.
local sluice = require "sluice"
sluice.configure { max_connections = 20000, heartbeat = 0 }
local sent = 0
sluice.get("/tick", function(req)
  local i = 0
  return coroutine.wrap(function()
    while true do
      i = i + 1
      sent = sent + 1
      coroutine.yield(sluice.message(i, { id = i }))
      sluice.sleep(1)
    end
  end)
end)
sluice.get("/sent", function() return sluice.response(200, tostring(sent)) end)
sluice.get("/health", function() return sluice.response(200, "ok") end)
