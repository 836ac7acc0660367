-- A client that vanishes without a FIN (its network goes away) is found by the
-- heartbeat writes and cleaned up. The gateway and the client run in a network
-- namespace of their own whose loopback is then taken down; that needs root.
local gw = require "gateway"
local unistd = require "posix.unistd"

local function sh(cmd) return os.execute(cmd .. " >/dev/null 2>&1") == 0 end

describe("a client that vanished without a FIN", function()
  local ns = "sluice-spec-" .. unistd.getpid()
  local usable = unistd.geteuid() == 0 and sh("command -v ip") and sh("command -v curl")
    and sh("ip netns add " .. ns) and sh("ip netns exec " .. ns .. " ip link set lo up")

  teardown(function() if usable then sh("ip netns del " .. ns) end end)

  it("is found by the heartbeat write and its stream cleaned up", function()
    assert.is_true(usable, "this spec needs root, iproute2 and curl")
    local s = gw.start([[
      local sluice = require "sluice"
      sluice.configure { heartbeat = 0.2 }
      sluice.get("/s", function()
        return sluice.stream(coroutine.wrap(function() coroutine.yield("x"); sluice.sleep(3600) end),
          { on_close = function() sluice.log.info("stream closed") end })
      end)
    ]], { source = true, prefix = { "ip", "netns", "exec", ns } })
    local out = gw.tmpname(".out")
    -- curl cannot outlive the spec: its network is taken away below
    local client = io.popen(("ip netns exec %s timeout 30 curl -sN http://127.0.0.1:%d/s > %s 2>&1; echo done")
      :format(ns, s.port, out))
    gw.wait_for(function() return gw.read_file(out):find("data: x", 1, true) end, 5, "the first event")
    gw.wait_for(function() return gw.read_file(out):find("\n:\n", 1, true) end, 5, "a heartbeat")
    assert.is_nil(s:logs():find("stream closed", 1, true))
    -- The network goes away: no FIN, no RST, just silence.
    assert.is_true(sh("ip netns exec " .. ns .. " ip link set lo down"))
    local ok, err = pcall(gw.wait_for, function() return s:logs():find("stream closed", 1, true) end, 15,
      "the stream to be cleaned up")
    sh("pkill -f 'curl -sN http://127.0.0.1:" .. s.port .. "/s'")
    client:close()
    os.remove(out)
    s:stop()
    assert(ok, err)
  end)
end)
