-- A generator per connection that ticks every second: the stream-mode benchmark's app.
local sluice = require "sluice"
sluice.configure { max_connections = 20000, heartbeat = 0 }
sluice.get("/tick", function(req)
  local i = 0
  return coroutine.wrap(function()
    while true do
      i = i + 1
      coroutine.yield(sluice.message(i, { id = i }))
      sluice.sleep(1)
    end
  end)
end)
sluice.get("/health", function() return sluice.response(200, "ok") end)
