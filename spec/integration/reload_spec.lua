-- Hot reload against the real binary: --watch and SIGHUP, failed loads, old
-- states serving their streams until they end, the hub outliving scripts,
-- timers stopping at the swap, new configuration for new connections.
local gw = require "gateway"
local json = require "cjson"
local psignal = require "posix.signal"
local unistd = require "posix.unistd"

local dir
local function app(version, extra)
  return ([[
    local sluice = require "sluice"
    local helper = require "helper"
    sluice.configure { heartbeat = %s }
    sluice.get("/v", function() return sluice.response(200, "%s " .. helper.name) end)
    sluice.get("/stream", function()
      return coroutine.wrap(function()
        for i = 1, 1000 do coroutine.yield("%s-" .. i); sluice.sleep(0.05) end
      end)
    end)
    sluice.get("/sub/:c", function(req) return sluice.subscribe(req.params.c) end)
    sluice.post("/pub/:c", function(req) return sluice.response(202, sluice.publish(req.params.c, "%s:" .. req.body)) end)
    sluice.get("/stats", function() return sluice.response(200, sluice.stats()) end)
    sluice.get("/health", function() return sluice.response(200, "ok") end)
    %s
  ]]):format(version == "v1" and "0" or "0.1", version, version, version, extra or "")
end

-- Replaces a file the way many editors save: write a temporary file, rename it over.
local function save(path, text)
  local tmp = path .. ".tmp~"
  gw.write_file(tmp, text)
  assert(os.rename(tmp, path))
end

describe("hot reload", function()
  local s, script
  before_each(function()
    dir = gw.tmpname("-app")
    assert(os.execute("mkdir -p " .. dir))
    script = dir .. "/app.lua"
    gw.write_file(dir .. "/helper.lua", "return { name = 'h1' }\n")
    gw.write_file(script, app("v1"))
    s = gw.start(script, { args = { "--watch" } })
  end)
  after_each(function()
    s:stop()
    os.execute("rm -rf " .. dir)
  end)

  local function get(path) return s:request("GET", path).body end
  local function stats() return json.decode(get("/stats")) end
  local function reloads() return stats().reloads end

  it("reloads when the script changes (saved by rename), logging what and how long", function()
    assert.equal("v1 h1", get("/v"))
    save(script, app("v2"))
    gw.wait_for(function() return get("/v") == "v2 h1" end, 10, "the new script")
    assert.matches("reloaded [^\n]*app%.lua in [%d.]+ ms", s:logs())
  end)

  it("reloads when a module beside the script changes, and on SIGHUP", function()
    gw.write_file(dir .. "/helper.lua", "return { name = 'h2' }\n")
    gw.wait_for(function() return get("/v") == "v1 h2" end, 10, "the new module")
    local n = reloads()
    s:signal(psignal.SIGHUP)
    gw.wait_for(function() return reloads() == n + 1 end, 10, "the SIGHUP reload")
  end)

  it("reloads when a module in a folder below the script changes", function()
    assert(os.execute("mkdir -p " .. dir .. "/lib/deep"))
    gw.write_file(dir .. "/lib/deep/extra.lua", "return 'x1'\n")
    save(script, app("v2", 'sluice.get("/extra", function() return sluice.response(200, require("lib.deep.extra")) end)'))
    gw.wait_for(function() return get("/extra") == "x1" end, 10, "the script that uses the module")
    -- the folders are watched again after each reload, so the new one is seen
    save(dir .. "/lib/deep/extra.lua", "return 'x2'\n")
    gw.wait_for(function() return get("/extra") == "x2" end, 10, "the changed module")
  end)

  it("keeps the previous script serving when the new one fails to load", function()
    local n = reloads()
    for i, broken in ipairs {
      "local sluice = require 'sluice'\nlocal = 1\n",                 -- syntax error
      "local sluice = require 'sluice'\n\nerror('top-level failure')\n", -- runtime error
      app("v2", 'sluice.get("/v", function() end)'),                   -- a route declared twice
    } do
      save(script, broken)
      gw.wait_for(function()
        local _, count = s:logs():gsub("reload of [^\n]* failed", "")
        return count == i
      end, 10, "failed reload " .. i)
      assert.equal("v1 h1", get("/v"))
    end
    local logs = s:logs()
    assert.matches("app%.lua:2: '<name>' expected near '='", logs)
    assert.matches("app%.lua:3: top%-level failure", logs)
    assert.matches("app%.lua:14: route declared twice: GET /v", logs)
    assert.equal(n, reloads())
  end)

  it("lets streams of the old state run to their end in it, then closes that state", function()
    local old = s:sse("/stream")
    assert.equal("v1-1", old:read_event().data)
    save(script, app("v2"))
    gw.wait_for(function() return get("/v") == "v2 h1" end, 10, "the new script")
    assert.equal(2, stats().states)
    -- the old stream goes on in its old state
    local ev = old:read_event()
    assert.matches("^v1%-%d+$", ev.data)
    local new = s:sse("/stream")
    assert.equal("v2-1", new:read_event().data)
    old:close()
    gw.wait_for(function() return stats().states == 1 end, 10, "the old state to be closed")
    assert.matches("closed the Lua state of a previous load", s:logs())
    new:close()
  end)

  it("keeps subscriptions across a reload: new publishes arrive, ids go on increasing, history stays", function()
    local sub = s:sse("/sub/room")
    local id1 = s:request("POST", "/pub/room", "a").body
    assert.equal("v1:a", sub:read_event().data)
    save(script, app("v2"))
    gw.wait_for(function() return get("/v") == "v2 h1" end, 10, "the new script")
    local id2 = s:request("POST", "/pub/room", "b").body
    local ev = sub:read_event()
    assert.same({ "v2:b", id2 }, { ev.data, ev.id })
    assert.is_true(tonumber(id2) > tonumber(id1))
    -- history from before the reload replays
    local late = s:sse("/sub/room", { ["Last-Event-ID"] = id1 })
    assert.equal("v2:b", late:read_event().data)
    late:close()
    sub:close()
    -- the subscriber did not pin the old state
    gw.wait_for(function() return stats().states == 1 end, 10, "one state")
  end)

  it("stops the old state's timers at the swap, and applies the new configuration to new connections", function()
    save(script, app("v1", 'sluice.every(0.02, function() sluice.publish("ticks", "v1") end)'))
    gw.wait_for(function() return reloads() == 1 end, 10, "the first reload")
    local sub = s:sse("/sub/ticks")
    assert.equal("v1", sub:read_event().data)
    save(script, app("v2", 'sluice.every(0.02, function() sluice.publish("ticks", "v2") end)'))
    -- once v2 ticks arrive, no v1 tick follows: the old timer stopped, nothing doubles
    local ev
    repeat ev = assert(sub:read_event()) until ev.data == "v2"
    for _ = 1, 20 do assert.equal("v2", sub:read_event().data) end
    sub:close()
    -- v2 configured heartbeat = 0.1 (v1 had 0): a new idle subscriber gets comments
    local idle = s:sse("/sub/quiet")
    assert.same({ "" }, idle:read_event(3).comments)
    idle:close()
  end)
end)

describe("reload under load", function()
  it("drops no subscriber and loses no event over five reloads in a row", function()
    local dir2 = gw.tmpname("-load")
    os.execute("mkdir -p " .. dir2)
    local script = dir2 .. "/app.lua"
    local body = [[
      local sluice = require "sluice"
      sluice.configure { heartbeat = 0 }
      sluice.get("/sub", function() return sluice.subscribe("load") end)
      sluice.get("/stats", function() return sluice.response(200, sluice.stats()) end)
      sluice.every(0.005, function() sluice.publish("load", "%s") end)
    ]]
    gw.write_file(script, body:format("gen0"))
    local s = gw.start(script)
    local subs = {}
    for i = 1, 100 do subs[i] = s:sse("/sub") end
    local function reloads() return json.decode(s:request("GET", "/stats").body).reloads end
    for r = 1, 5 do
      gw.write_file(script, body:format("gen" .. r))
      s:signal(psignal.SIGHUP)
      gw.wait_for(function() return reloads() == r end, 10, "reload " .. r)
      -- keep the clients drained while reloading
      for i = 1, 100 do assert(subs[i]:read_event()) end
    end
    -- every subscriber saw consecutive ids (one channel, one publisher: no gap means no loss)
    -- up to an event of the last generation
    for i = 1, 100 do
      local c, last = subs[i], nil
      while true do
        local ev = assert(c:read_event(), "subscriber " .. i .. " lost its stream")
        local id = tonumber(ev.id)
        if last then assert.equal(last + 1, id, "gap for subscriber " .. i) end
        last = id
        if ev.data == "gen5" then break end
      end
    end
    assert.equal(100, json.decode(s:request("GET", "/stats").body).connections - 1)
    for i = 1, 100 do subs[i]:close() end
    s:stop()
    os.execute("rm -rf " .. dir2)
  end)
end)
