-- sluice.static and CORS against the real binary.
local gw = require "gateway"

describe("static files", function()
  local s
  setup(function() s = gw.start("spec/fixtures/static_app.lua") end)
  teardown(function() s:stop() end)

  it("serves files with their content type, and index.html for folders", function()
    local res = s:request("GET", "/site.css")
    assert.equal(200, res.status)
    assert.equal("text/css; charset=utf-8", res.headers["content-type"])
    assert.equal("body{}\n", res.body)
    res = s:request("GET", "/")
    assert.equal("<h1>home</h1>\n", res.body)
    assert.equal("text/html; charset=utf-8", res.headers["content-type"])
    assert.equal("<p>sub</p>\n", s:request("GET", "/sub/").body)
    assert.equal("text/javascript; charset=utf-8", s:request("GET", "/assets/sub/app.js").headers["content-type"])
    res = s:request("GET", "/sub")
    assert.equal(301, res.status)
    assert.equal("/sub/", res.headers.location)
    assert.equal(301, s:request("GET", "/assets").status)
    assert.equal("body{}\n", s:request("GET", "/alias.css").body) -- a symlink inside the folder is fine
  end)

  it("answers HEAD without a body and 404 for what is not there", function()
    local c = s:connect()
    c:send("HEAD /site.css HTTP/1.1\r\nHost: x\r\n\r\n")
    local st, h = c:read_head()
    assert.equal(200, st)
    assert.equal("7", h["content-length"])
    c:close()
    assert.equal(404, s:request("GET", "/missing.txt").status)
    assert.equal(405, s:request("DELETE", "/site.css").status)
  end)

  it("answers 304 to a matching ETag or Last-Modified", function()
    local res = s:request("GET", "/site.css")
    local etag, lm = res.headers.etag, res.headers["last-modified"]
    assert.truthy(etag)
    assert.truthy(lm)
    assert.equal(304, s:request("GET", "/site.css", nil, { ["If-None-Match"] = etag }).status)
    assert.equal(200, s:request("GET", "/site.css", nil, { ["If-None-Match"] = 'W/"other"' }).status)
    assert.equal(304, s:request("GET", "/site.css", nil, { ["If-Modified-Since"] = lm }).status)
    assert.equal(200, s:request("GET", "/site.css", nil, { ["If-Modified-Since"] = "Mon, 01 Jan 1990 00:00:00 GMT" }).status)
  end)

  it("refuses every way out of the folder", function()
    for _, path in ipairs {
      "/../outside/secret.txt", "/sub/../../outside/secret.txt", "/%2e%2e/outside/secret.txt",
      "/%2E%2E/outside/secret.txt", "/sub/%2e%2e/%2e%2e/outside/secret.txt", "/..%2Foutside%2Fsecret.txt",
      "/sub%2F..%2F..%2Foutside/secret.txt", "/.%2e/outside/secret.txt", "/..%5Coutside%5Csecret.txt",
      "/leak.txt", "/leakdir/secret.txt", "/leakdir/", "/assets/../outside/secret.txt",
      "/assets/%2e%2e/outside/secret.txt", "/site.css%00.html", "/./site.css",
      "//etc/passwd", "/%2Fetc%2Fpasswd", "/sub%0d%0aX-Injected:%20yes/", "/sub%0a",
    } do
      local res = s:raw("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_true(res.status == 404 or res.status == 400, path .. " got " .. tostring(res.status))
      assert.is_nil((res.body or ""):find("top secret", 1, true), path)
      res.client:close()
    end
  end)
end)

describe("CORS", function()
  local s
  setup(function() s = gw.start("spec/fixtures/static_app.lua") end)
  teardown(function() s:stop() end)

  it("adds Access-Control-Allow-Origin for allowed origins only, on plain and SSE responses", function()
    local res = s:request("GET", "/api/ping", nil, { Origin = "http://allowed.example" })
    assert.equal("http://allowed.example", res.headers["access-control-allow-origin"])
    assert.equal("Origin", res.headers.vary)
    res = s:request("GET", "/api/ping", nil, { Origin = "http://evil.example" })
    assert.is_nil(res.headers["access-control-allow-origin"])
    res = s:request("GET", "/api/ping")
    assert.is_nil(res.headers["access-control-allow-origin"])
    local c = s:sse("/api/events", { Origin = "http://other.example" })
    assert.equal("http://other.example", c.headers["access-control-allow-origin"])
    assert.equal("event", c:read_event().data)
    c:close()
    c = s:sse("/api/events", { Origin = "http://evil.example" })
    assert.is_nil(c.headers["access-control-allow-origin"])
    c:close()
  end)

  it("answers a preflight for an allowed origin", function()
    local res = s:request("OPTIONS", "/api/ping", nil, {
      Origin = "http://allowed.example",
      ["Access-Control-Request-Method"] = "POST",
      ["Access-Control-Request-Headers"] = "content-type",
    })
    assert.equal(204, res.status)
    assert.equal("http://allowed.example", res.headers["access-control-allow-origin"])
    assert.equal("GET, HEAD, POST", res.headers["access-control-allow-methods"])
    assert.equal("content-type", res.headers["access-control-allow-headers"])
    res = s:request("OPTIONS", "/api/ping", nil, { Origin = "http://evil.example" })
    assert.equal(405, res.status)
    assert.is_nil(res.headers["access-control-allow-origin"])
  end)

  it("allows any origin with \"*\"", function()
    local t = gw.start([[
      local sluice = require "sluice"
      sluice.configure { cors = "*" }
      sluice.get("/e", function() return "x" end)
    ]], { source = true })
    local c = t:sse("/e", { Origin = "http://anywhere.example" })
    assert.equal("*", c.headers["access-control-allow-origin"])
    c:close()
    t:stop()
  end)

  it("allows credentials when asked: the request's origin instead of \"*\", on preflights too", function()
    local t = gw.start([[
      local sluice = require "sluice"
      sluice.configure { cors = { origins = "*", credentials = true } }
      sluice.get("/e", function() return "x" end)
    ]], { source = true })
    local c = t:sse("/e", { Origin = "http://app.example" })
    assert.same({ "http://app.example", "true", "Origin" }, { c.headers["access-control-allow-origin"],
      c.headers["access-control-allow-credentials"], c.headers["vary"] })
    c:close()
    local res = t:request("OPTIONS", "/e", nil, { Origin = "http://app.example", ["Access-Control-Request-Method"] = "GET" })
    assert.same({ 204, "http://app.example", "true" }, { res.status, res.headers["access-control-allow-origin"],
      res.headers["access-control-allow-credentials"] })
    t:stop()
    local code, err = gw.run({ gw.write_file(gw.tmpname(".lua"),
      "require('sluice').configure { cors = { origins = '*', credentials = 'yes' } }\n") })
    assert.equal(1, code)
    assert.matches("configuration key 'cors' must be", err)
  end)
end)
