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
-- GET /jobs lists the jobs started since the gateway started.
--
-- Across a reload (SIGHUP, or --watch and an edit): a running job body
-- finishes in the previous version of the script, still publishing to its
-- channel; the list of jobs and the next id are handed to the new version
-- with sluice.on_reload / sluice.previous_state, and the progress of each job
-- is kept up to date by whichever version its events reach.
--
-- Run:   ./build/sluice --watch examples/jobs.lua
-- Try:   curl -N http://127.0.0.1:8080/jobs/1/events &   curl -X POST 'http://127.0.0.1:8080/jobs?steps=20'
--        (edit and save this file while it runs: the stream goes on)
local sluice = require "sluice"

sluice.configure { history = 1000 }

-- What the previous version handed over, or a fresh start.
local state = sluice.previous_state() or { next_id = 1, jobs = {} }
sluice.on_reload(function() return state end)

local function progress(job)
  return sluice.message({ step = job.step, steps = job.steps, done = job.done }, { event = "progress" })
end

-- Keeps a job's progress in this version's table from its own events: a job
-- whose body runs in a previous version still reaches the new one this way.
local function track(id)
  sluice.after(0, function()
    local job = state.jobs[id]
    for ev in sluice.listen("job-" .. id) do
      local p = sluice.json.decode(ev.data)
      if p then job.step, job.done = p.step, p.done end
      if job.done then return end
    end
  end)
end
for id, job in pairs(state.jobs) do
  if not job.done then track(id) end
end

sluice.post("/jobs", function(req)
  local steps = math.floor(math.max(1, math.min(tonumber(req.query.steps) or 10, 10000)))
  local delay = math.max(0, math.min(tonumber(req.query.delay) or 0.5, 60))
  local id = tostring(state.next_id)
  state.next_id = state.next_id + 1
  local job = { steps = steps, step = 0, done = false, started = os.time() }
  state.jobs[id] = job
  track(id)
  sluice.after(0, function()
    for step = 1, steps do
      sluice.sleep(delay) -- a slice of real work would go here
      sluice.publish("job-" .. id, { step = step, steps = steps, done = step == steps }, { event = "progress" })
    end
  end)
  return sluice.response(202, { id = id }, { Location = "/jobs/" .. id .. "/events" })
end)

sluice.get("/jobs", function() return sluice.response(200, state.jobs) end)

sluice.get("/jobs/:id/events", function(req)
  local job = state.jobs[req.params.id]
  if not job then return sluice.response(404, "no such job\n") end
  return sluice.subscribe("job-" .. req.params.id, { snapshot = progress(job) })
end)

sluice.get("/jobs/:id/wait", function(req)
  local job = state.jobs[req.params.id]
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
