-- sluice.shared: dictionaries kept in the gateway, the same for every load of
-- the script: their operations, expiry, eviction of the least recently used
-- entries past the size configure gives, and a count the previous load's
-- timer body keeps that the new load reads at once.
local gw = require "gateway"
local json = require "cjson"
local psignal = require "posix.signal"

local APP = [[
local sluice = require "sluice"
local loads = (sluice.previous_state() or 0) + 1
sluice.on_reload(function() return loads end)
sluice.configure { shared = { small = 2048 } }
local d, small = sluice.shared("d"), sluice.shared("small")
sluice.get("/loads", function() return sluice.response(200, tostring(loads)) end)

-- the values a call returned, nils as JSON nulls
local function pack(...)
  local r = { ... }
  for k = 1, select("#", ...) do if r[k] == nil then r[k] = sluice.json.null end end
  return sluice.json.array(r)
end
local function answer(...) return sluice.response(200, pack(...)) end
sluice.get("/ops", function()
  local out = sluice.json.array()
  local function rec(...) out[#out + 1] = pack(...) end
  rec(d:set("t", { a = { 1, 2 }, b = "x" }))
  rec(d:get("t"))
  rec(d:add("t", 1))
  rec(d:add("u", 1))
  rec(d:replace("nope", 1))
  rec(d:replace("u", 2))
  rec(d:get("u"))
  rec(d:incr("c", 5, 10))
  rec(d:incr("c"))
  rec(d:incr("missing"))
  rec(d:incr("t"))
  rec(d:ttl("u"))
  rec(d:ttl("missing"))
  d:delete("u")
  rec(d:get("u"))
  rec(d:set("u", nil))
  local keys = d:keys()
  table.sort(keys)
  rec(table.concat(keys, ","))
  rec(pcall(d.set, d, "f", print))
  rec(pcall(d.get, d, ""))
  rec(pcall(d.get, "t"))
  rec(pcall(sluice.configure, { shared = { x = 10 } }))
  return sluice.response(200, out)
end)

sluice.post("/ttl", function() return answer(d:set("brief", "x", 0.2), d:ttl("brief") > 0) end)
sluice.get("/brief", function() return answer(d:get("brief"), #d:keys(0)) end)

-- fills the 2 KiB dictionary; k1 is read in between, so k2 is the least recently used
sluice.post("/fill", function()
  small:flush_all()
  small:set("k1", string.rep("a", 100))
  small:set("k2", string.rep("b", 100))
  small:get("k1")
  local forced_at
  for i = 3, 100 do
    local ok, err, forcible = small:set("k" .. i, string.rep("c", 100))
    if forcible then forced_at = i break end
  end
  local big_ok, big_err = small:set("big", string.rep("x", 4096))
  return answer(forced_at, small:get("k1") ~= nil, small:get("k2") ~= nil, small:free_space() >= 0,
    small:capacity(), big_ok, big_err)
end)

-- the count a timer body of this load adds to, every 20 ms, until /stop
local running = false
sluice.post("/count", function()
  running = true
  sluice.after(0, function()
    while running do
      d:incr("ticks", 1, 0)
      sluice.sleep(0.02)
    end
  end)
  return sluice.response(202)
end)
sluice.post("/stop", function() running = false return sluice.response(200) end)
sluice.get("/ticks", function() return sluice.response(200, tostring(d:get("ticks") or 0)) end)
]]

describe("sluice.shared", function()
  local s, path
  setup(function()
    path = gw.write_file(gw.tmpname(".lua"), APP)
    s = gw.start(path)
  end)
  teardown(function() s:stop() end)

  it("gets, sets, adds, replaces, counts, deletes and lists data, and refuses what it cannot hold", function()
    local r = json.decode(s:request("GET", "/ops").body)
    local null = json.null
    assert.same({ true, null, false }, r[1])
    assert.same({ { a = { 1, 2 }, b = "x" } }, r[2])
    assert.same({ null, "exists" }, r[3])
    assert.same({ true, null, false }, r[4])
    assert.same({ null, "not found" }, r[5])
    assert.same({ true, null, false }, r[6])
    assert.same({ 2 }, r[7])
    assert.same({ 15 }, r[8])
    assert.same({ 16 }, r[9])
    assert.same({ null, "not found" }, r[10])
    assert.same({ null, "not a number" }, r[11])
    assert.same({ 0 }, r[12])
    assert.same({ null, "not found" }, r[13])
    assert.same({ null }, r[14])
    assert.same({ true, null, false }, r[15])
    assert.same({ "c,t" }, r[16])
    assert.same(false, r[17][1])
    assert.matches("cannot hold a function", r[17][2], 1, true)
    assert.matches("a key is 1 to 65535 bytes", r[18][2], 1, true)
    assert.matches("call its methods with a colon", r[19][2], 1, true)
    assert.matches("configuration key 'shared' must be", r[20][2], 1, true)
  end)

  it("forgets an entry when its ttl has passed", function()
    assert.same({ true, true }, json.decode(s:request("POST", "/ttl").body))
    assert.equal("x", json.decode(s:request("GET", "/brief").body)[1])
    gw.wait_for(function() return json.decode(s:request("GET", "/brief").body)[1] == json.null end, 5, "the expiry")
  end)

  it("evicts the least recently used entries past its size, and refuses a value larger than the whole", function()
    local r = json.decode(s:request("POST", "/fill").body)
    -- an entry costs 64 bytes, its key (2 or 3) and its value (105 copied): the 12th passes 2048
    assert.same({ 12, true, false, true, 2048, json.null, "no memory" }, r)
  end)

  it("is the same dictionary for the next load: a count the previous load's timer keeps is read at once", function()
    assert.equal(202, s:request("POST", "/count").status)
    gw.wait_for(function() return tonumber(s:request("GET", "/ticks").body) > 0 end, 5, "a first tick")
    s:signal(psignal.SIGHUP)
    gw.wait_for(function() return s:request("GET", "/loads").body == "2" end, 10, "the reload")
    -- the new load reads the old load's timer counting on
    local seen = tonumber(s:request("GET", "/ticks").body)
    gw.wait_for(function() return tonumber(s:request("GET", "/ticks").body) > seen end, 5, "the count going on")
  end)
end)
