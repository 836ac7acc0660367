-- examples/relay.lua end to end: a generation streamed from the fake model
-- the script serves itself, watched live by several viewers, resumed with
-- Last-Event-ID without a lost or repeated token, cancelled with DELETE; and
-- with Redis, watched and cancelled from another node.
local gw = require "gateway"
local json = require "cjson"

local function start(args)
  local port = gw.free_port()
  return gw.start("examples/relay.lua", { port = port, args = args, log_level = "info",
    prefix = { "env", "RELAY_SELF=http://127.0.0.1:" .. port } })
end

local function generation(s, prompt)
  local r = assert(s:request("POST", "/generations", json.encode({ prompt = prompt }),
    { ["Content-Type"] = "application/json" }))
  assert.equal(201, r.status, r.body)
  return json.decode(r.body).id
end

-- Reads a viewer's events up to the end event (or n tokens); returns the tokens' texts, the end event, the last id.
local function watch(c, n)
  local texts, last = {}, nil
  while true do
    local ev = assert(c:read_event(10))
    if ev.event == "token" then
      texts[#texts + 1] = json.decode(ev.data).text
      last = ev.id
      if n and #texts == n then return texts, nil, last end
    elseif ev.event then
      return texts, ev, last
    end
  end
end

describe("examples/relay.lua", function()
  it("streams a generation to every viewer, and a viewer that reconnects loses and repeats nothing", function()
    local s = start()
    local id = generation(s, "hello relay")
    local a, b = s:sse("/generations/" .. id), s:sse("/generations/" .. id)
    local first, _, last = watch(a, 3)
    a:close()
    local again = s:sse("/generations/" .. id, { ["Last-Event-ID"] = last })
    local rest, done = watch(again)
    assert.equal("done", done.event)
    local all, done_b = watch(b)
    assert.equal("done", done_b.event)
    assert.equal(table.concat(all), table.concat(first) .. table.concat(rest))
    assert.matches("^You said: hello relay%.", table.concat(all))
    assert.equal(#all, json.decode(done.data).tokens)
    -- a viewer that comes after the end still gets the whole generation
    local late, done_late = watch(s:sse("/generations/" .. id))
    assert.equal(table.concat(all), table.concat(late))
    assert.equal("done", done_late.event)
    again:close()
    b:close()
    s:stop()
  end)

  it("cancels a generation with DELETE; a bad prompt is a 400", function()
    local s = start()
    local id = generation(s, ("word "):rep(200))
    local c = s:sse("/generations/" .. id)
    watch(c, 2)
    assert.equal(202, s:request("DELETE", "/generations/" .. id).status)
    local _, ended = watch(c)
    assert.equal("cancelled", ended.event)
    c:close()
    assert.equal(404, s:request("DELETE", "/generations/nope").status)
    assert.equal(400, s:request("POST", "/generations", "prompt=", { ["Content-Type"] = "application/x-www-form-urlencoded" }).status)
    s:stop()
  end)

  it("with Redis, viewers on another node see every token, and DELETE there cancels", function()
    local redis = gw.redis()
    local a, b = start { "--redis", redis.url }, start { "--redis", redis.url }
    for _, node in ipairs { a, b } do
      gw.wait_for(function()
        local r = node:request("GET", "/health")
        return r and r.status == 200
      end, 10, "the Redis engine")
    end
    local id = generation(a, "two nodes")
    local texts, done = watch(b:sse("/generations/" .. id))
    assert.equal("done", done.event)
    assert.matches("^You said: two nodes%.", table.concat(texts))
    id = generation(a, ("word "):rep(300))
    local c = b:sse("/generations/" .. id)
    watch(c, 2)
    assert.equal(202, b:request("DELETE", "/generations/" .. id).status)
    local _, ended = watch(c)
    assert.equal("cancelled", ended.event)
    c:close()
    a:stop()
    b:stop()
    redis:stop()
  end)
end)
