-- hello.lua: the smallest Sluice app: a one-off event and a plain health check.
--
-- Run:   ./build/sluice examples/hello.lua      (listens on 127.0.0.1:8080)
-- Try:   curl -N http://127.0.0.1:8080/hello   -> "data: Hello, world!" then the stream ends
--        curl http://127.0.0.1:8080/health     -> ok
--        open http://127.0.0.1:8080/ in a browser: the page shows the event
local sluice = require "sluice"

-- A string returned by a handler is sent as one event, then the stream ends.
sluice.get("/hello", function(req)
  return "Hello, world!"
end)

-- sluice.message adds an id and an event name; a table is sent as JSON.
sluice.get("/hello/:name", function(req)
  return sluice.message({ greeting = "Hello, " .. req.params.name .. "!" }, { id = 1, event = "greeting" })
end)

-- Plain HTTP for health checks: never probe an SSE route for readiness.
sluice.get("/health", function(req)
  return sluice.response(200, "ok\n")
end)

-- The web page (examples/pages/hello) and the stylesheet the pages share.
sluice.static("/assets", "pages/assets")
sluice.static("/", "pages/hello")
