-- Small things a script author meets: conn:close() answers like conn:send,
-- an empty ?lastEventId= is no id, a log line keeps what follows a NUL, and a
-- configuration type error says the type it got.
local gw = require "gateway"

local APP = [[
local sluice = require "sluice"
sluice.configure { history = 10 }
sluice.get("/sub", function(req)
  return sluice.subscribe("f", { snapshot = sluice.message(req.last_event_id or "none", { event = "from" }) })
end)
sluice.post("/pub", function(req) return sluice.response(202, sluice.publish("f", req.body)) end)
sluice.get("/close-twice", function()
  return sluice.raw(function(conn)
    local a = conn:close()
    local b, err = conn:close()
    sluice.log.info("close answers", tostring(a), tostring(b), tostring(err))
  end)
end)
sluice.get("/nul", function() sluice.log.info("before\0after") return sluice.response(200, "ok") end)
sluice.get("/config", function()
  local ok, err = pcall(sluice.configure, { heartbeat = "15" })
  return sluice.response(200, err)
end)
]]

describe("script authors' friction", function()
  local s
  setup(function() s = gw.start(APP, { source = true }) end)
  teardown(function() s:stop() end)

  it("conn:close() returns true, then nil and 'closed'", function()
    local c = s:sse("/close-twice")
    assert.is_true(c:closed_by_peer())
    gw.wait_for(function() return s:logs():find("close answers true nil closed", 1, true) end, 5, "the answers")
  end)

  it("treats an empty ?lastEventId= as no id (no replay of the whole history)", function()
    s:request("POST", "/pub", "old")
    local c = s:sse("/sub?lastEventId=")
    local ev = assert(c:read_event())
    assert.equal("from", ev.event)
    assert.equal("none", ev.data)
    s:request("POST", "/pub", "new")
    assert.equal("new", assert(c:read_event()).data) -- not "old" replayed first
    c:close()
  end)

  it("keeps a log line whole past a NUL byte", function()
    assert.equal(200, s:request("GET", "/nul").status)
    gw.wait_for(function() return s:logs():find("before\\0after", 1, true) end, 5, "the whole line")
  end)

  it("says the type a configuration key got", function()
    assert.matches('heartbeat\' must be a number of seconds %(0 = off%), got the string "15"', s:request("GET", "/config").body)
  end)
end)

describe("options checked when they are given", function()
  it("refuses opts.data that conn.data cannot hold with a 500, before any head goes out", function()
    local s = gw.start([[
      local sluice = require "sluice"
      sluice.get("/bad-data", function() return sluice.subscribe("x", { data = { f = print } }) end)
      sluice.get("/good-data", function() return sluice.subscribe("x", { data = { nick = "ann", tags = { "a" } } }) end)
    ]], { source = true })
    local r = s:request("GET", "/bad-data")
    assert.equal(500, r.status)
    gw.wait_for(function() return s:logs():find("opts.data cannot hold", 1, true) end, 5, "the error")
    local c = s:sse("/good-data")
    assert.equal(200, c.status)
    c:close()
    s:stop()
  end)
end)

describe("sluice.listen in a generator", function()
  it("lets its channels go as soon as the client leaves, not when the garbage collector runs", function()
    local s = gw.start([[
      local sluice = require "sluice"
      collectgarbage("stop") -- only the stream's end may release the listeners
      sluice.get("/follow", function()
        return coroutine.wrap(function()
          for ev in sluice.listen("jobs") do coroutine.yield(ev.data) end
        end)
      end)
      sluice.get("/count", function() return sluice.response(200, tostring(sluice.subscribers("jobs"))) end)
    ]], { source = true })
    local cs = {}
    for i = 1, 20 do cs[i] = s:sse("/follow") end
    gw.wait_for(function() return s:request("GET", "/count").body == "20" end, 5, "20 listeners")
    for _, c in ipairs(cs) do c:close() end
    gw.wait_for(function() return s:request("GET", "/count").body == "0" end, 5, "the listeners to go")
    s:stop()
  end)
end)

describe("handlers", function()
  it("stream a generic-for triple (return ipairs(list)), warn of a route that can never match, give one query value", function()
    local s = gw.start([[
      local sluice = require "sluice"
      sluice.get("/list", function() return ipairs { "a", "b", "c" } end)
      sluice.get("/users/:id", function() return "id" end)
      sluice.get("/users/me", function() return "me" end)
      sluice.get("/q", function(req) return sluice.response(200, tostring(sluice.query_value(req, "k"))) end)
    ]], { source = true })
    assert.equal("1", s:request("GET", "/q?k=1&k=2").body)
    assert.equal("3", s:request("GET", "/q?k=3").body)
    assert.equal("nil", s:request("GET", "/q").body)
    local c = s:sse("/list")
    for _, want in ipairs { "a", "b", "c" } do assert.equal(want, assert(c:read_event()).data) end
    assert.is_true(c:closed_by_peer())
    assert.matches("route GET /users/me %(.-%) can never match: GET /users/:id", s:logs())
    s:stop()
  end)
end)

describe("errors that belong to a request", function()
  it("name the route and the script's line, with one traceback, whatever raised them", function()
    local path = gw.write_file(gw.tmpname(".lua"), [[
local sluice = require "sluice"
sluice.get("/gen", function()
  return coroutine.wrap(function()
    coroutine.yield("one")
    error("boom in a generator")
  end)
end)
sluice.get("/raw", function() return sluice.raw(function() error("boom in raw") end) end)
sluice.get("/true", function() return true end)
sluice.get("/nan", function() return { x = 0 / 0 } end)
]])
    local s = gw.start(path)
    local name = path:match("[^/]+$")
    local c = s:sse("/gen")
    assert.equal("one", assert(c:read_event()).data)
    assert.is_true(c:closed_by_peer())
    assert.equal(500, s:request("GET", "/true").status)
    assert.equal(500, s:request("GET", "/nan").status)
    local r = s:sse("/raw")
    assert.is_true(r:closed_by_peer())
    for route, line in pairs { ["GET /gen"] = 2, ["GET /raw"] = 8, ["GET /true"] = 9, ["GET /nan"] = 10 } do
      local pat = "handler error in route " .. route .. " %([^)]*" .. name:gsub("%p", "%%%0") .. ":" .. line .. "%)"
      gw.wait_for(function() return s:logs():find(pat) end, 5, route)
    end
    -- one traceback for the generator's error, not two
    local logs = s:logs()
    local entry = logs:match("handler error in route GET /gen.-\n%d%d%d%d%-") or logs:match("handler error in route GET /gen.*")
    local _, n = entry:gsub("stack traceback:", "")
    assert.equal(1, n)
    assert.matches(name:gsub("%p", "%%%0") .. ":5: boom in a generator", entry)
    s:stop()
    os.remove(path)
  end)
end)

describe("connection tokens", function()
  it("name a connection without letting anyone guess another's", function()
    local s = gw.start([[
      local sluice = require "sluice"
      sluice.get("/me", function() return sluice.raw(function(conn) conn:write(conn.token .. "\n") end) end)
      sluice.get("/find/:t", function(req)
        local c = sluice.conn(req.params.t)
        return sluice.response(200, c and ("found " .. c.id) or "none")
      end)
    ]], { source = true })
    local c = s:connect()
    c:send("GET /me HTTP/1.1\r\nHost: x\r\n\r\n")
    local _, e = assert(c:until_match("\r\n\r\n[^\n]+\n"))
    local token = c.buf:match("\r\n\r\n([^\n]+)\n")
    local id = token:match("^(%d+)%.")
    assert.equal("found " .. id, s:request("GET", "/find/" .. token).body)
    assert.equal("none", s:request("GET", "/find/" .. token:sub(1, -2) .. (token:sub(-1) == "A" and "B" or "A")).body)
    assert.equal("none", s:request("GET", "/find/" .. (tonumber(id) + 1) .. token:match("(%..*)$")).body)
    c:close()
    s:stop()
  end)
end)

describe("conn.data", function()
  it("is a plain table: replaced whole, iterated, counted, encoded, changed in place, and handed to the next load", function()
    local psignal = require "posix.signal"
    local path = gw.write_file(gw.tmpname(".lua"), [[
local sluice = require "sluice"
local loads = (sluice.previous_state() or 0) + 1
sluice.on_reload(function() return loads end)
sluice.get("/loads", function() return sluice.response(200, tostring(loads)) end)
sluice.get("/join", function(req)
  return sluice.raw(function(conn)
    conn.data = { nick = req.query.nick, tags = {} }
    conn:send("id " .. conn.id)
  end)
end)
sluice.post("/tag/:id", function(req)
  local conn = sluice.conn(tonumber(req.params.id))
  conn.data.tags[#conn.data.tags + 1] = req.body
  return sluice.response(200, "ok")
end)
sluice.get("/show/:id", function(req)
  local conn = sluice.conn(tonumber(req.params.id))
  local keys = {}
  for k in pairs(conn.data) do keys[#keys + 1] = k end
  table.sort(keys)
  return sluice.response(200, table.concat(keys, ",") .. " " .. #conn.data.tags .. " "
    .. table.concat(conn.data.tags, ",") .. " " .. sluice.json.encode(conn.data.nick))
end)
sluice.get("/bad/:id", function(req)
  local conn = sluice.conn(tonumber(req.params.id))
  local _, e1 = pcall(function() conn.data = 5 end)
  local _, e2 = pcall(function() conn.data = { f = print } end)
  local _, e3 = pcall(function() conn.id = 5 end)
  return sluice.response(200, table.concat({ e1, e2, e3 }, "\n"))
end)
sluice.get("/list", function()
  local n = 0
  for _, conn in ipairs(sluice.connections { mode = "raw" }) do n = n + #conn.data.tags end
  return sluice.response(200, tostring(n))
end)
]])
    local s = gw.start(path)
    local c = s:sse("/join?nick=ann")
    local id = assert(c:read_event()).data:match("^id (%d+)$")
    assert.equal("nick,tags 0  \"ann\"", s:request("GET", "/show/" .. id).body)
    s:request("POST", "/tag/" .. id, "a")
    s:request("POST", "/tag/" .. id, "b")
    assert.equal("nick,tags 2 a,b \"ann\"", s:request("GET", "/show/" .. id).body)
    local bad = s:request("GET", "/bad/" .. id).body
    assert.matches("conn.data must be a table or nil, not a number", bad, 1, true)
    assert.matches("conn.data cannot hold a function", bad, 1, true)
    assert.matches("conn.id cannot be set", bad, 1, true)
    assert.equal("nick,tags 2 a,b \"ann\"", s:request("GET", "/show/" .. id).body) -- a refused write changes nothing
    -- the next load of the script finds what the previous one wrote in place, and writes on
    s:signal(psignal.SIGHUP)
    gw.wait_for(function() return s:request("GET", "/loads").body == "2" end, 10, "the reload")
    assert.equal("2", s:request("GET", "/list").body)
    s:request("POST", "/tag/" .. id, "c")
    assert.equal("nick,tags 3 a,b,c \"ann\"", s:request("GET", "/show/" .. id).body)
    c:close()
    s:stop()
  end)
end)

describe("connection ids", function()
  it("start from a block drawn at random, so a restart does not give the same ids again", function()
    local APP = [[
      local sluice = require "sluice"
      sluice.get("/id", function() return sluice.raw(function(conn) conn:send(tostring(conn.id)) conn:close() end) end)
    ]]
    local function first_id()
      local s = gw.start(APP, { source = true })
      local c = s:sse("/id")
      local text = assert(c:read_event()).data
      c:close()
      s:stop()
      assert.matches("^%d+$", text) -- printed whole
      return tonumber(text)
    end
    local a, b = first_id(), first_id()
    assert.is_true(a < 2 ^ 45 and b < 2 ^ 45) -- blocks below 2^25 are the drawn ones
    assert.are_not.equal(math.floor(a / 2 ^ 20), math.floor(b / 2 ^ 20))
  end)
end)
