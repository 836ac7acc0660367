-- Each example does what its header comment says.
local gw = require "gateway"
local json = require "cjson"

describe("examples/hello.lua", function()
  it("sends a one-off greeting and answers the health check", function()
    local s = gw.start("examples/hello.lua")
    local c = s:sse("/hello")
    assert.equal("Hello, world!", c:read_event().data)
    assert.is_true(c:closed_by_peer())
    c = s:sse("/hello/ann")
    local ev = c:read_event()
    assert.equal("greeting", ev.event)
    assert.same({ greeting = "Hello, ann!" }, json.decode(ev.data))
    assert.equal("ok\n", s:request("GET", "/health").body)
    s:stop()
  end)
end)

describe("examples/clock.lua", function()
  it("resumes after Last-Event-ID and answers 204 once all ticks are had", function()
    local s = gw.start("examples/clock.lua")
    local c = s:sse("/clock", { ["Last-Event-ID"] = "58" })
    assert.equal(1000, c:read_event().retry)
    local a, b = c:read_event(3), c:read_event(3)
    assert.same({ "59", "60" }, { a.id, b.id })
    assert.equal(60, json.decode(b.data).tick)
    assert.is_true(c:closed_by_peer(3))
    assert.equal(204, s:request("GET", "/clock", nil, { ["Last-Event-ID"] = "60" }).status)
    s:stop()
  end)
end)

describe("examples/tokens.lua", function()
  it("streams start, tokens in order, done, then ends", function()
    local s = gw.start("examples/tokens.lua")
    local c = s:sse("/chat?prompt=hi")
    local ev = c:read_event()
    assert.equal("start", ev.event)
    assert.equal("hi", json.decode(ev.data).prompt)
    local text, n = {}, 0
    while true do
      ev = assert(c:read_event())
      if ev.event == "done" then break end
      n = n + 1
      assert.equal("token", ev.event)
      assert.equal(tostring(n), ev.id)
      text[n] = json.decode(ev.data).text
    end
    assert.equal(n, json.decode(ev.data).tokens)
    assert.matches("^Server%-Sent Events keep one HTTP response open", table.concat(text))
    assert.is_true(c:closed_by_peer())
    s:stop()
  end)
end)

describe("examples/presence.lua", function()
  -- the example's five-second clock may come in between: skip it
  local function next_of(c)
    while true do
      local ev = assert(c:read_event())
      if ev.event ~= "clock" then return ev end
    end
  end

  it("tells every client who is there, and fans out a shout", function()
    local s = gw.start("examples/presence.lua")
    local ann = s:sse("/presence?name=ann")
    assert.same({ "ann" }, json.decode(next_of(ann).data))
    local bob = s:sse("/presence?name=bob")
    assert.same({ "ann", "bob" }, json.decode(next_of(bob).data))
    assert.same({ "ann", "bob" }, json.decode(next_of(ann).data))
    assert.equal(202, s:request("POST", "/shout", "hello all").status)
    for _, c in ipairs { ann, bob } do
      local ev = next_of(c)
      assert.same({ "shout", "hello all" }, { ev.event, ev.data })
    end
    bob:close()
    local ev = next_of(ann)
    assert.equal("presence", ev.event)
    assert.same({ "ann" }, json.decode(ev.data))
    ann:close()
    s:stop()
  end)
end)

describe("examples/chat.lua", function()
  it("lets anyone read a room, posts only with the token, and replays after Last-Event-ID", function()
    local unistd = require "posix.stdlib"
    unistd.setenv("CHAT_TOKEN", "s3cret")
    local s = gw.start("examples/chat.lua")
    unistd.setenv("CHAT_TOKEN", nil)
    local c = s:sse("/events/lobby")
    gw.wait_for(function() return json.decode(s:request("GET", "/rooms/lobby/online").body).online == 1 end)
    local res = s:request("POST", "/publish/lobby", '{"user":"ann","text":"hi"}')
    assert.equal(401, res.status)
    res = s:request("POST", "/publish/lobby", '{"user":"ann","text":"hi"}', { Authorization = "Bearer wrong" })
    assert.equal(401, res.status)
    res = s:request("POST", "/publish/lobby", '{"user":"ann","text":"hi"}', { Authorization = "Bearer s3cret" })
    assert.equal(202, res.status)
    local first = json.decode(res.body).id
    res = s:request("POST", "/publish/lobby", "plain text", { Authorization = "Bearer s3cret" })
    assert.equal(202, res.status)
    local ev = c:read_event()
    assert.same({ "message", first }, { ev.event, ev.id })
    assert.equal("hi", json.decode(ev.data).text)
    assert.equal("ann", json.decode(ev.data).user)
    assert.equal("plain text", json.decode(c:read_event().data).text)
    c:close()
    -- a reader that comes back with the first id gets what it missed
    c = s:sse("/events/lobby", { ["Last-Event-ID"] = first })
    assert.equal("plain text", json.decode(c:read_event().data).text)
    c:close()
    assert.equal(400, s:request("GET", "/events/bad%20room").status)
    s:stop()
  end)
end)

describe("examples/progress.lua", function()
  it("streams progress steps, then done, and resumes after Last-Event-ID", function()
    local s = gw.start("examples/progress.lua")
    local c = s:sse("/progress/job?steps=4&delay=0")
    assert.equal(500, c:read_event().retry)
    for step = 1, 4 do
      local ev = c:read_event()
      assert.same({ "progress", tostring(step) }, { ev.event, ev.id })
      assert.equal(step * 25, json.decode(ev.data).percent)
    end
    assert.equal("done", c:read_event().event)
    assert.is_true(c:closed_by_peer())
    c = s:sse("/progress/job?steps=4&delay=0", { ["Last-Event-ID"] = "3" })
    c:read_event()
    assert.equal("4", c:read_event().id)
    c:close()
    assert.equal(204, s:request("GET", "/progress/job?steps=4", nil, { ["Last-Event-ID"] = "5" }).status)
    s:stop()
  end)
end)

describe("example pages", function()
  it("are served by every example at /", function()
    for _, name in ipairs { "hello", "clock", "tokens", "chat", "progress", "presence" } do
      local s = gw.start("examples/" .. name .. ".lua")
      local res = s:request("GET", "/")
      assert.equal(200, res.status, name)
      assert.matches("<title>Sluice · " .. name .. "</title>", res.body)
      assert.equal("text/css; charset=utf-8", s:request("GET", "/assets/style.css").headers["content-type"])
      s:stop()
    end
  end)
end)
