-- relay.lua: a resumable relay of a model's token stream. A generation is
-- started once, streamed from an OpenAI-compatible chat-completions endpoint,
-- and published token by token on a channel of its own, whose history keeps
-- every token: any number of viewers watch it live, and a viewer that
-- reconnects with Last-Event-ID resumes without losing or repeating a token.
-- The generation goes on when the one who started it leaves.
--
-- POST   /generations            starts one: JSON {"prompt": "..."} or a form with prompt=;
--                                answers 201 {"id": ..., "events": "/generations/ID"}
-- GET    /generations/:id        the generation as events: "token" ({"text": ...}),
--                                then "done" (or "failed", "cancelled"); from the start,
--                                or after Last-Event-ID
-- DELETE /generations/:id        cancels it (viewers get "cancelled")
-- GET    /health                 200 once tokens can be published (with Redis: connected)
-- GET    /                       a page to ask and watch (examples/pages/relay)
--
-- The upstream: RELAY_UPSTREAM_URL (e.g. https://api.openai.com/v1/chat/completions),
-- RELAY_API_KEY and RELAY_MODEL. With none set, a small fake model served by this
-- script at /fake/v1/chat/completions stands in, reached at RELAY_SELF
-- (http://127.0.0.1:8080, where `sluice examples/relay.lua` listens).
--
-- Run:   ./build/sluice examples/relay.lua
-- Try:   curl -d prompt=hello http://127.0.0.1:8080/generations
--        curl -N http://127.0.0.1:8080/generations/ID
--        curl -N -H 'Last-Event-ID: ...' http://127.0.0.1:8080/generations/ID   (resumes)
-- Scale: with --redis on several nodes, viewers on any node see every token, and
--        DELETE on any node cancels (the node that generates checks a Redis key).
local sluice = require "sluice"

local SELF = os.getenv("RELAY_SELF") or "http://127.0.0.1:8080"
local UPSTREAM = os.getenv("RELAY_UPSTREAM_URL") or (SELF .. "/fake/v1/chat/completions")
local KEY = os.getenv("RELAY_API_KEY")
local MODEL = os.getenv("RELAY_MODEL") or "fake-model"

-- A generation's tokens are its channel's history: keep enough for a long
-- answer, for an hour after it ends.
sluice.configure { history = 20000, history_ttl = 3600, heartbeat = 15 }

local running = {} -- id -> the upstream's event iterator, on the node that generates

local function channel(id) return "generation:" .. id end

local function redis_engine() return sluice.stats().engine == "redis" end

local function cancelled(id)
  if not redis_engine() then return false end
  return sluice.redis.call("EXISTS", "relay:cancel:" .. id) == 1
end

-- Streams the upstream's answer into the generation's channel (a timer body:
-- it owes nothing to the request that started it).
local function generate(id, prompt)
  local headers = { ["Content-Type"] = "application/json" }
  if KEY then headers.Authorization = "Bearer " .. KEY end
  local events = sluice.http.events(UPSTREAM, {
    method = "POST", headers = headers, connect_timeout = 10,
    body = { model = MODEL, stream = true, messages = { { role = "user", content = prompt } } },
  })
  running[id] = events
  local n = 0
  for ev in events do
    if ev.data == "[DONE]" then break end
    local chunk = sluice.json.decode(ev.data)
    local choice = chunk and chunk.choices and chunk.choices[1]
    local text = choice and choice.delta and choice.delta.content
    if type(text) == "string" and text ~= "" then
      sluice.publish(channel(id), sluice.message({ text = text }, { event = "token" }))
      n = n + 1
      if n % 20 == 0 and cancelled(id) then events:close() end
    end
  end
  running[id] = nil
  local ch = channel(id)
  if events.closed_by_delete or cancelled(id) then
    sluice.publish(ch, sluice.message({ tokens = n }, { event = "cancelled" }))
  elseif events.error then
    sluice.publish(ch, sluice.message({ error = events.error, detail = events.error_detail }, { event = "failed" }))
  else
    sluice.publish(ch, sluice.message({ tokens = n }, { event = "done" }))
  end
end

sluice.post("/generations", function(req)
  local prompt
  local ct = req.headers["content-type"] or ""
  if ct:find("application/json", 1, true) then
    local body = sluice.json.decode(req.body)
    prompt = type(body) == "table" and body.prompt
  else
    prompt = (sluice.form.decode(req.body) or {}).prompt
  end
  if type(prompt) ~= "string" or prompt == "" or #prompt > 8000 then
    return sluice.response(400, { error = "give a prompt (at most 8000 bytes)" })
  end
  local id = sluice.base64url_encode(sluice.random_bytes(12))
  sluice.after(0, function() generate(id, prompt) end)
  return sluice.response(201, { id = id, events = "/generations/" .. id }, { Location = "/generations/" .. id })
end)

sluice.get("/generations/:id", function(req)
  -- From the start for a new viewer; after Last-Event-ID for one that comes back.
  return sluice.subscribe(channel(req.params.id), { last_event_id = req.last_event_id or "earliest" })
end)

sluice.delete("/generations/:id", function(req)
  local id = req.params.id
  local events = running[id]
  if events then
    events.closed_by_delete = true
    events:close()
  elseif redis_engine() then
    sluice.redis.call("SET", "relay:cancel:" .. id, "1", "EX", 3600) -- the generating node sees it
  else
    return sluice.response(404, { error = "no such generation running" })
  end
  return sluice.response(202, { id = id, cancelling = true })
end)

sluice.get("/health", function()
  local st = sluice.stats()
  if st.engine == "redis" and not st.redis.connected then return sluice.response(503, "redis unavailable\n") end
  return sluice.response(200, "ok\n")
end)

-- The fake model: an OpenAI-style stream of chat-completion chunks, a word
-- every 30 ms, answering with the prompt's words and a few of its own.
sluice.post("/fake/v1/chat/completions", function(req)
  local body = sluice.json.decode(req.body) or {}
  local prompt = body.messages and body.messages[1] and body.messages[1].content or ""
  local words = {}
  for w in ("You said: " .. prompt .. ". Here is a streamed answer, one token at a time, " ..
    "relayed by Sluice to every viewer."):gmatch("%S+%s*") do words[#words + 1] = w end
  return sluice.stream(coroutine.wrap(function()
    for i, w in ipairs(words) do
      sluice.sleep(0.03)
      coroutine.yield(sluice.json.encode({ id = "fake", object = "chat.completion.chunk", model = body.model,
        choices = { { index = 0, delta = { content = w }, finish_reason = i == #words and "stop" or nil } } }))
    end
    coroutine.yield("[DONE]")
  end), { heartbeat = 0 })
end)

sluice.static("/assets", "pages/assets")
sluice.static("/", "pages/relay")
