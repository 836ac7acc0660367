-- jobs.lua: background jobs that report progress over pub/sub; a reload in the
-- middle of a job loses nothing.
--
-- POST /jobs?steps=N&delay=S starts a job (answers 202 and its id); the work
-- runs in a timer body (sluice.after), one step every S seconds, and publishes
-- a "progress" event per step ({ step, steps, done }; the last has done = true)
-- to the channel job-<id>.
-- GET /jobs/:id/events follows a job: the current progress first (a snapshot),
-- then every step; a reconnect with Last-Event-ID replays what it missed.
-- GET /jobs/:id/wait answers once the job is done (a long poll: sluice.listen).
-- GET /jobs lists the jobs (a finished one for an hour after its end).
--
-- Across a reload (SIGHUP, or --watch and an edit): a running job body
-- finishes in the previous version of the script, still publishing to its
-- channel and writing its progress into sluice.shared("jobs"), a dictionary
-- the gateway keeps for every version of the script: the new version reads
-- each step there the moment the old one writes it. (With --redis the
-- dictionary is per node; the events reach every node.)
--
-- Run:   ./build/sluice --watch examples/jobs.lua
-- Try:   curl -N http://127.0.0.1:8080/jobs/1/events &   curl -X POST 'http://127.0.0.1:8080/jobs?steps=20'
--        (edit and save this file while it runs: the stream goes on)
local sluice = require "sluice"

sluice.configure { history = 1000, shared = { jobs = 4 * 1024 * 1024 } }

-- id -> { step, steps, done, started }, and "#next" the last id given out.
-- When the dictionary is full, the least recently used jobs are forgotten.
local jobs = sluice.shared("jobs")
local KEEP = 3600 -- seconds a finished job stays listed

local function progress(job)
  return sluice.message({ step = job.step, steps = job.steps, done = job.done }, { event = "progress" })
end

sluice.post("/jobs", function(req)
  local steps = math.floor(math.max(1, math.min(tonumber(req.query.steps) or 10, 10000)))
  local delay = math.max(0, math.min(tonumber(req.query.delay) or 0.5, 60))
  local id = string.format("%d", jobs:incr("#next", 1, 0))
  local job = { steps = steps, step = 0, done = false, started = os.time() }
  jobs:set(id, job)
  sluice.after(0, function()
    for step = 1, steps do
      sluice.sleep(delay) -- a slice of real work would go here
      job.step, job.done = step, step == steps
      jobs:set(id, job, job.done and KEEP or nil)
      sluice.publish("job-" .. id, { step = step, steps = steps, done = job.done }, { event = "progress" })
    end
  end)
  return sluice.response(202, { id = id }, { Location = "/jobs/" .. id .. "/events" })
end)

sluice.get("/jobs", function()
  local list = {}
  for _, id in ipairs(jobs:keys(1000)) do
    if id ~= "#next" then list[id] = jobs:get(id) end
  end
  return sluice.response(200, list)
end)

sluice.get("/jobs/:id/events", function(req)
  local job = jobs:get(req.params.id)
  if not job then return sluice.response(404, "no such job\n") end
  return sluice.subscribe("job-" .. req.params.id, { snapshot = progress(job) })
end)

sluice.get("/jobs/:id/wait", function(req)
  local job = jobs:get(req.params.id)
  if not job then return sluice.response(404, "no such job\n") end
  local done = job.done
  if not done then
    for ev in sluice.listen("job-" .. req.params.id, { timeout = tonumber(req.query.timeout) or 30 }) do
      local p = sluice.json.decode(ev.data)
      if p and p.done then
        done = true
        break
      end
    end
  end
  return sluice.response(200, { id = req.params.id, done = done })
end)

sluice.get("/health", function() return sluice.response(200, "ok") end)
