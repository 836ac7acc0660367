-- progress.lua: long jobs reporting progress as a stream, resumable from Last-Event-ID.
--
-- GET /progress/:job?steps=N&delay=S streams one "progress" event per step of a
-- job ({ step, steps, percent }, id = the step), then a "done" event, then ends.
-- The work is simulated with sluice.sleep(delay); a real job would do a slice of
-- work per step. A client that reconnects with Last-Event-ID resumes after that
-- step instead of starting over; a finished job answers 204 so EventSource stops.
--
-- Run:   ./build/sluice examples/progress.lua
-- Try:   curl -N 'http://127.0.0.1:8080/progress/import?steps=5'
--        open http://127.0.0.1:8080/ in a browser: three jobs, three bars
local sluice = require "sluice"

sluice.configure { retry = 500 }

sluice.get("/progress/:job", function(req)
  local steps = math.floor(math.max(1, math.min(tonumber(req.query.steps) or 10, 1000)))
  local delay = math.max(0, math.min(tonumber(req.query.delay) or 0.2, 10))
  local from = (tonumber(req.last_event_id) or 0) + 1
  if from > steps + 1 then return nil end -- already done
  return sluice.stream(coroutine.wrap(function()
    for step = from, steps do
      sluice.sleep(delay)
      coroutine.yield(sluice.message({ step = step, steps = steps, percent = math.floor(step * 100 / steps) },
        { id = step, event = "progress" }))
    end
    coroutine.yield(sluice.message({ job = req.params.job }, { id = steps + 1, event = "done" }))
  end), { heartbeat = 5 })
end)

sluice.get("/health", function() return sluice.response(200, "ok") end)

-- The web page (examples/pages/progress) and the stylesheet the pages share.
sluice.static("/assets", "pages/assets")
sluice.static("/", "pages/progress")
