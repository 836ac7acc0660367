-- examples/authz.lua end to end: subscriptions the (demo) auth service allows,
-- its refusals passed on, its answers cached, and a 503 when it is away.
local gw = require "gateway"

local function start(env)
  local port = gw.free_port()
  local prefix = { "env", "AUTHZ_SELF=http://127.0.0.1:" .. port }
  for _, e in ipairs(env or {}) do prefix[#prefix + 1] = e end
  return gw.start("examples/authz.lua", { port = port, log_level = "info", prefix = prefix })
end

describe("examples/authz.lua", function()
  it("subscribes those the auth service allows, by bearer token or cookie, and passes refusals on", function()
    local s = start()
    local c = s:sse("/events/news", { Authorization = "Bearer reader" })
    assert.equal(200, c.status)
    local k = s:sse("/events/news", { Cookie = "token=news-only" })
    assert.equal(200, k.status)
    assert.equal(202, s:request("POST", "/events/news", "hello").status)
    assert.equal("hello", assert(c:read_event()).data)
    assert.equal("hello", assert(k:read_event()).data)
    assert.equal(403, s:request("GET", "/events/sports", nil, { Authorization = "Bearer news-only" }).status)
    local r = s:request("GET", "/events/news")
    assert.equal(401, r.status)
    assert.equal("Bearer", r.headers["www-authenticate"])
    c:close()
    k:close()
    s:stop()
  end)

  it("asks once per user and channel while the answer is cached", function()
    local s = start()
    local before = tonumber(s:request("GET", "/demo-auth/asked").body)
    local conns = {}
    for i = 1, 5 do
      conns[i] = s:sse("/events/news", { Authorization = "Bearer reader" })
      assert.equal(200, conns[i].status)
    end
    assert.equal(before + 1, tonumber(s:request("GET", "/demo-auth/asked").body))
    for _, c in ipairs(conns) do c:close() end
    s:stop()
  end)

  it("answers 503 when the auth service does not answer", function()
    local s = start { "AUTHZ_URL=http://127.0.0.1:1/auth" }
    assert.equal(503, s:request("GET", "/events/news", nil, { Authorization = "Bearer reader" }).status)
    gw.wait_for(function() return s:logs():find("the auth service did not answer: connect", 1, true) end, 5, "the log")
    s:stop()
  end)
end)
