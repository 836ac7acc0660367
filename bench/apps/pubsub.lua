-- The pub/sub benchmark's app: subscribers on one channel, and a publisher on a
-- timer whose events carry their publish time (monotonic ns) as data.
local sluice = require "sluice"
sluice.configure { max_connections = 20000, heartbeat = 0, history = 100 }

sluice.get("/sub/:chan", function(req) return sluice.subscribe(req.params.chan) end)

local ticker
local published = 0
-- POST /run?hz=H&secs=S&burst=B[&count=N]: publish H events a second for S
-- seconds to "bench", B at a time (one tick every B/H seconds: B events in one
-- loop turn), and N events at most.
sluice.post("/run", function(req)
  local hz, secs = tonumber(req.query.hz) or 10, tonumber(req.query.secs) or 10
  local burst = math.max(1, math.floor(tonumber(req.query.burst) or 1))
  local count = tonumber(req.query.count) or math.huge
  published = 0
  if ticker then ticker:stop() end
  local stop_at = sluice.now() + secs
  ticker = sluice.every(burst / hz, function()
    if sluice.now() >= stop_at then ticker:stop(); return end
    for _ = 1, burst do
      if published >= count then ticker:stop(); return end
      if sluice.publish("bench", string.format("%.0f", sluice.now() * 1e9)) then published = published + 1 end
    end
  end)
  return sluice.response(202)
end)

-- POST /pub/:chan: one event, the body as its data (bench/publish.py; compare.sh).
sluice.post("/pub/:chan", function(req)
  local id, err = sluice.publish(req.params.chan, req.body)
  return sluice.response(id and 202 or 503, id or err)
end)

-- GET /published: how many events /run has published (that Redis, if used, took).
sluice.get("/published", function() return sluice.response(200, tostring(published)) end)
sluice.get("/count", function() return sluice.response(200, tostring(sluice.subscribers("bench"))) end)
sluice.get("/health", function() return sluice.response(200, "ok") end)
