-- The filtered pub/sub benchmark's app: subscribers on one channel with topic
-- selectors of 1,000 shapes (k = 0..899: one exact item topic each; k =
-- 900..999: a glob over item ids that start with k - 900), and a publisher on
-- a timer that publishes to one random item topic at a time.
local sluice = require "sluice"
sluice.configure { max_connections = 20000, heartbeat = 0, history = 100 }

local BASE = "https://example.com/items/"

sluice.get("/sub/:k", function(req)
  local k = tonumber(req.params.k)
  local sel = k < 900 and (BASE .. k) or (BASE .. (k - 900) .. "*")
  return sluice.subscribe("items", { match = sel })
end)

local ticker
-- POST /run?hz=H&secs=S: H publishes a second for S seconds, each to one random item (0..899).
sluice.post("/run", function(req)
  local hz, secs = tonumber(req.query.hz) or 100, tonumber(req.query.secs) or 10
  if ticker then ticker:stop() end
  local stop_at = sluice.now() + secs
  ticker = sluice.every(1 / hz, function()
    if sluice.now() >= stop_at then ticker:stop(); return end
    sluice.publish("items", string.format("%.0f", sluice.now() * 1e9), { topics = BASE .. math.random(0, 899) })
  end)
  return sluice.response(202)
end)
sluice.get("/count", function() return sluice.response(200, tostring(sluice.subscribers("items"))) end)
sluice.get("/health", function() return sluice.response(200, "ok") end)
