-- The reload benchmark's app: subscribers on one channel and a timer that
-- publishes to it continuously. bench/reload.sh rewrites nothing: it sends
-- SIGHUP, which loads this file again (a new state, a new timer).
local sluice = require "sluice"
sluice.configure { max_connections = 20000, heartbeat = 0, history = 1000 }
sluice.get("/sub", function() return sluice.subscribe("load") end)
sluice.get("/stats", function() return sluice.response(200, sluice.stats()) end)
sluice.get("/health", function() return sluice.response(200, "ok") end)
sluice.every(0.05, function() sluice.publish("load", "tick") end)
