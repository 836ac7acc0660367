-- The outbound benchmark's gateway (bench/outbound.sh): each request to /p is
-- answered with what UPSTREAM answers (sluice.http), and the relay: POST /relay
-- reads UPSTREAM's event stream once and publishes each event to "bench".
local sluice = require "sluice"
local UP, PATH = os.getenv("UPSTREAM"), os.getenv("UPSTREAM_PATH") or "/"
sluice.configure { max_connections = 20000, heartbeat = 0, history = 100,
  http = { max_concurrent = 20000, max_per_host = 20000 } }

sluice.get("/p", function()
  local res, err, detail = sluice.http.get(UP .. PATH, { timeout = 60 })
  if not res then return sluice.response(502, err .. ": " .. detail) end
  return sluice.response(res.status, res.body)
end)

sluice.get("/sub/:chan", function(req) return sluice.subscribe(req.params.chan) end)
local relayed = 0
sluice.post("/relay", function(req)
  local url = UP .. "/events?hz=" .. (req.query.hz or 10) .. "&secs=" .. (req.query.secs or 10)
  sluice.after(0, function()
    for ev in sluice.http.events(url) do
      if sluice.publish("bench", ev.data) then relayed = relayed + 1 end
    end
  end)
  return sluice.response(202)
end)
sluice.get("/published", function() return sluice.response(200, tostring(relayed)) end)
sluice.get("/count", function() return sluice.response(200, tostring(sluice.subscribers("bench"))) end)
sluice.get("/health", function() return sluice.response(200, "ok") end)
