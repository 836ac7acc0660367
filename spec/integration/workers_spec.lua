-- --workers: the I/O threads that write published events to the clients.
-- A load tool holds many subscribers while a timer publishes in bursts; every
-- connection must get every event once and in order (ids one apart, exactly
-- the number published). No timings are asserted.
local gw = require "spec.helpers.gateway"

local LOAD = (gw.BIN:match("^(.*)/[^/]+$") or ".") .. "/sse_load"

local function smoke(workers, conns, count, burst)
  local srv = gw.start("bench/apps/pubsub.lua", { args = { "--workers", tostring(workers) }, log_level = "info" })
  local out, err = gw.tmpname(".out"), gw.tmpname(".err")
  local pid = gw.tool({ LOAD, "-p", tostring(srv.port), "-P", "/sub/bench", "-n", tostring(conns), "-c", "100",
    "-G", "-E", tostring(count), "-d", tostring(gw.VALGRIND and 600 or 60) }, out, err)
  gw.wait_for(function() return gw.read_file(err):find("ready " .. conns) end, 30, "the subscribers to connect")
  local r = srv:request("POST", ("/run?hz=4000&secs=60&burst=%d&count=%d"):format(burst, count))
  assert.equal(202, r.status)
  assert.equal(0, gw.wait_exit(pid, 60, "every subscriber to get every event"))
  local line = gw.read_file(out)
  os.remove(out)
  os.remove(err)
  srv:stop()
  return line
end

describe("--workers 2", function()
  it("delivers every event once and in order to every subscriber", function()
    local conns, count = 200, 400
    local line = smoke(2, conns, count, 8)
    assert.truthy(line:find("connected=" .. conns .. " failed=0 ", 1, true), line)
    assert.truthy(line:find(" events=" .. conns * count .. " ", 1, true), line)
    assert.truthy(line:find(" id_gaps=0 complete=" .. conns .. " over=0", 1, true), line)
  end)

  it("refuses a bad count", function()
    local code, err = gw.run({ "--workers", "0", "bench/apps/pubsub.lua" })
    assert.equal(1, code)
    assert.truthy(err:find("bad --workers '0'", 1, true), err)
    code, err = gw.run({ "--workers", "many", "bench/apps/pubsub.lua" })
    assert.equal(1, code)
    assert.truthy(err:find("bad --workers 'many'", 1, true), err)
  end)
end)
