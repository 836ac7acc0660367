-- Metrics: the Prometheus text format passes promtool, the counters move with
-- what happens, and a real Prometheus (one of the spec's own, on a free
-- loopback port) scrapes the gateway and answers with its values.
local gw = require "gateway"
local json = require "cjson"
local unistd = require "posix.unistd"
local fcntl = require "posix.fcntl"
local psignal = require "posix.signal"
local wait = require "posix.sys.wait"
local socket = require "socket"
local http = require "socket.http"

local APP = [[
  local sluice = require "sluice"
  sluice.get("/metrics", sluice.metrics_handler())
  sluice.get("/table", function() return sluice.response(200, sluice.metrics()) end)
  sluice.get("/sub/:c", function(req) return sluice.subscribe(req.params.c) end)
  sluice.post("/pub/:c", function(req) return sluice.response(202, sluice.publish(req.params.c, req.body)) end)
  sluice.get("/boom", function() error("boom") end)
]]

local function value(text, name)
  return tonumber(text:match("\n" .. name:gsub("[%-%.%+%[%]%(%)%$%^%%%?%*]", "%%%0") .. " ([^\n]+)"))
end

describe("metrics", function()
  local s
  setup(function() s = gw.start(APP, { source = true }) end)
  teardown(function() s:stop() end)

  it("are Prometheus text that promtool accepts, with counters that follow what happens", function()
    -- a channel named with bytes that are not UTF-8, a quote and a newline: still valid metrics
    local subs = { s:sse("/sub/news"), s:sse("/sub/news"), s:sse("/sub/other"), s:sse("/sub/%FF%22%0A") }
    s:request("POST", "/pub/news", "hello")
    assert.equal(500, s:request("GET", "/boom").status)
    local res = s:request("GET", "/metrics")
    assert.equal("text/plain; version=0.0.4; charset=utf-8", res.headers["content-type"])
    local path = gw.write_file(gw.tmpname(".prom"), res.body)
    local p = io.popen("promtool check metrics < " .. path .. " 2>&1")
    local out = p:read("*a")
    local ok = p:close()
    os.remove(path)
    assert.is_true(ok, out)
    local text = "\n" .. res.body
    assert.equal(4, value(text, 'sluice_streams{mode="subscribe"}'))
    assert.equal(2, value(text, 'sluice_channel_subscribers{channel="news"}'))
    assert.equal(1, value(text, "sluice_published_total"))
    assert.equal(2, value(text, "sluice_delivered_total"))
    assert.equal(1, value(text, 'sluice_lua_errors_total{where="handler"}'))
    assert.equal(1, value(text, 'sluice_requests_total{method="GET",code="5xx"}'))
    assert.equal(5, value(text, "sluice_connections")) -- four subscribers and this request
    assert.is_true(value(text, 'sluice_lua_memory_bytes{state="current"}') > 0)
    assert.is_true(value(text, "sluice_fanout_seconds_count") >= 1)
    -- the same as a table for scripts
    local t = json.decode(s:request("GET", "/table").body)
    assert.equal(1, t.sluice_published_total)
    for _, c in ipairs(subs) do c:close() end
  end)
end)

describe("metrics scraped by Prometheus", function()
  local s, prom_pid, dir
  teardown(function()
    if prom_pid then psignal.kill(prom_pid, psignal.SIGTERM); wait.wait(prom_pid) end
    if s then s:stop() end
    if dir then os.execute("rm -rf " .. dir) end
  end)

  local function query(port, q)
    local body = http.request(("http://127.0.0.1:%d/api/v1/query?query=%s"):format(port,
      q:gsub("[^%w]", function(ch) return ("%%%02X"):format(ch:byte()) end)))
    local ok, r = pcall(json.decode, body or "")
    if not ok or not r or r.status ~= "success" or not r.data.result[1] then return nil end
    return tonumber(r.data.result[1].value[2])
  end

  it("shows the gateway up, with its connections", function()
    s = gw.start(APP, { source = true })
    dir = gw.tmpname("-prom")
    assert(os.execute("mkdir -p " .. dir))
    local port = gw.free_port()
    gw.write_file(dir .. "/prometheus.yml", ([[
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: sluice
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:%d"]
]]):format(s.port))
    prom_pid = assert(unistd.fork())
    if prom_pid == 0 then
      local log = fcntl.open(dir .. "/prometheus.log", fcntl.O_WRONLY + fcntl.O_CREAT, 420)
      unistd.dup2(log, 1)
      unistd.dup2(log, 2)
      unistd.execp("prometheus", { "--config.file=" .. dir .. "/prometheus.yml", "--storage.tsdb.path=" .. dir .. "/data",
        "--web.listen-address=127.0.0.1:" .. port })
      os.exit(127)
    end
    local subs = { s:sse("/sub/a"), s:sse("/sub/b") }
    gw.wait_for(function() return query(port, 'up{job="sluice"}') == 1 end, 60, "Prometheus to scrape the gateway")
    -- two subscribers and Prometheus' own scrape connection
    gw.wait_for(function() return query(port, "sluice_connections") == 3 end, 30, "sluice_connections = 3")
    assert.equal(2, query(port, 'sluice_streams{mode="subscribe"}'))
    for _, c in ipairs(subs) do c:close() end
  end)
end)
