-- grip.lua: Pushpin's GRIP proxy as a route script. Every request is passed
-- to an origin; when the origin answers with "Grip-Hold: stream", the gateway
-- keeps the client's connection open and appends what is published to the
-- answer's channels, as Pushpin does, so an app written for Pushpin runs on
-- Sluice unchanged. Any other answer is passed through as it came.
--
-- ANY  /*                  passed to the origin (GRIP_ORIGIN) with a Grip-Sig header
--                          (a JWT signed with GRIP_SIG_KEY, as Pushpin signs, so
--                          origin libraries know a GRIP proxy is in front)
-- POST /publish/           Pushpin's publish API: {"items": [{"channel": ...,
--                          "formats": {"http-stream": {"content": ...}}}]}
--                          (content-bin for base64, "action": "close" to end the
--                          streams); from 127.0.0.1 only, as Pushpin's control port
--
-- An origin's answer that holds a stream: "Grip-Hold: stream", "Grip-Channel: a,
-- b" (parameters after ";" are ignored), optionally "Grip-Keep-Alive: DATA;
-- format=cstring|raw|base64; timeout=SECONDS" (DATA sent after that long with
-- nothing else). Its status, headers (but Grip-*) and body go to the client
-- first. "Grip-Hold: response" (long polling) is not held: that answer is
-- passed through.
--
-- With no GRIP_ORIGIN, a demo origin served by this script at /demo-origin
-- stands in, reached at GRIP_SELF (http://127.0.0.1:8080): /hello answers
-- plainly, /stream holds an event stream on channel "test".
--
-- Run:   ./build/sluice examples/grip.lua
-- Try:   curl -N http://127.0.0.1:8080/stream
--        curl -d '{"items":[{"channel":"test","formats":{"http-stream":{"content":"event: message\ndata: hello\n\n"}}}]}' \
--             http://127.0.0.1:8080/publish/
local sluice = require "sluice"

local SELF = os.getenv("GRIP_SELF") or "http://127.0.0.1:8080"
local ORIGIN = os.getenv("GRIP_ORIGIN") or (SELF .. "/demo-origin")
local SIG_KEY = os.getenv("GRIP_SIG_KEY") or "changeme" -- Pushpin's default sig_key

sluice.configure { history = 0, heartbeat = 0, max_body = 8 * 1024 * 1024 }

local b64 = sluice.base64url_encode

--- Grip-Sig: a JWT (HS256) with iss "pushpin", valid for an hour.
local function grip_sig()
  local head = b64(sluice.json.encode({ typ = "JWT", alg = "HS256" }))
  local claims = b64(sluice.json.encode({ iss = "pushpin", exp = os.time() + 3600 }))
  return head .. "." .. claims .. "." .. b64(sluice.hmac_sha256(SIG_KEY, head .. "." .. claims))
end

-- Headers that belong to one hop, or that the gateway frames itself.
local HOP = { connection = true, ["keep-alive"] = true, te = true, trailer = true, upgrade = true,
  ["transfer-encoding"] = true, ["content-length"] = true, host = true, ["proxy-authorization"] = true,
  ["proxy-connection"] = true, expect = true }

local function request_headers(req)
  local h = {}
  for k, v in pairs(req.headers) do
    if not HOP[k] and k:sub(1, 5) ~= "grip-" then h[k] = v end
  end
  local fwd = req.headers["x-forwarded-for"]
  h["x-forwarded-for"] = fwd and (fwd .. ", " .. req.remote_addr) or req.remote_addr
  h["grip-sig"] = grip_sig()
  return h
end

local function response_headers(res)
  local h = {}
  for k, v in pairs(res.headers) do
    if not HOP[k] and k:sub(1, 5) ~= "grip-" then h[k] = v end
  end
  return h
end

local function list(v) return type(v) == "table" and v or { v } end

--- The channels of a Grip-Channel header (its values joined): names, parameters dropped.
local function channels(v)
  local out = {}
  for _, one in ipairs(list(v)) do
    for item in one:gmatch("[^,]+") do
      local name = item:match("^%s*([^;%s]+)")
      if name then out[#out + 1] = "grip:" .. name end
    end
  end
  return out
end

--- A cstring's escapes (\n, \r, \t, \\) as the bytes they stand for.
local function cstring(s)
  return (s:gsub("\\(.)", { n = "\n", r = "\r", t = "\t", ["\\"] = "\\" }))
end

--- Grip-Keep-Alive: the bytes to send and after how many idle seconds (nil if none).
local function keep_alive(v)
  if not v then return nil end
  v = list(v)[1]
  local data, params = v:match("^([^;]*)(.*)$")
  local format = params:match("format=([%w-]+)") or "raw"
  local timeout = tonumber(params:match("timeout=(%d+)")) or 55
  if format == "cstring" then data = cstring(data)
  elseif format == "base64" then data = sluice.base64url_decode((data:gsub("+", "-"):gsub("/", "_"):gsub("=", "")))
  end
  return data, timeout
end

--- Holds the client's stream: the origin's answer first, then every publish.
local function hold(res)
  local chans = channels(res.headers["grip-channel"])
  local ka, every = keep_alive(res.headers["grip-keep-alive"])
  return sluice.raw(function(conn)
    if res.body ~= "" then conn:write(res.body) end
    while true do
      local got = false
      for ev in sluice.listen(chans, { timeout = every }) do
        got = true
        if ev.event == "close" then return conn:close() end
        conn:write(ev.data)
      end
      if not got and ka then conn:write(ka) end
    end
  end, { status = res.status, headers = response_headers(res) })
end

-- Pushpin's publish API.
sluice.post("/publish/", function(req)
  if req.remote_addr ~= "127.0.0.1" and req.remote_addr ~= "::1" then
    return sluice.response(403, "publish from the local host only\n")
  end
  local body = sluice.json.decode(req.body)
  if type(body) ~= "table" or type(body.items) ~= "table" then return sluice.response(400, "expected {\"items\": [...]}\n") end
  for _, item in ipairs(body.items) do
    local stream = type(item) == "table" and type(item.formats) == "table" and item.formats["http-stream"]
    if type(item) == "table" and type(item.channel) == "string" and type(stream) == "table" then
      local ch = "grip:" .. item.channel
      if stream.action == "close" then
        sluice.publish(ch, "", { event = "close" })
      elseif type(stream.content) == "string" then
        sluice.publish(ch, stream.content)
      elseif type(stream["content-bin"]) == "string" then
        local bin = sluice.base64url_decode((stream["content-bin"]:gsub("+", "-"):gsub("/", "_"):gsub("=", "")))
        if bin then sluice.publish(ch, bin) end
      end
    end
  end
  return sluice.response(200, "Published\n")
end)

-- The demo origin, as an app written for Pushpin would answer.
sluice.get("/demo-origin/hello", function(req)
  local ok = sluice.jwt.verify(req.headers["grip-sig"], SIG_KEY) ~= nil
  return sluice.response(200, "hello world\n", { ["X-Grip-Sig-Valid"] = ok and "yes" or "no" })
end)
sluice.get("/demo-origin/stream", function(req)
  return sluice.response(200, ":ok\n\n", {
    ["Content-Type"] = "text/event-stream",
    ["Grip-Hold"] = "stream",
    ["Grip-Channel"] = "test, other; prev-id=1",
    ["Grip-Keep-Alive"] = ":\\n\\n; format=cstring; timeout=" .. (req.query.keepalive or "20"),
  })
end)

-- The rest of the demo origin: never passed on (it would come back here).
sluice.route("*", "/demo-origin/*", function() return sluice.response(404, "Not Found\n") end)

-- Everything else goes to the origin.
sluice.route("*", "/*", function(req)
  local path = req.raw_path .. (req.raw_query ~= "" and ("?" .. req.raw_query) or "")
  local res, err, detail = sluice.http.request {
    url = ORIGIN .. path, method = req.method, headers = request_headers(req),
    body = req.body ~= "" and req.body or nil, timeout = 30,
  }
  if not res then return sluice.response(502, "origin: " .. err .. ": " .. tostring(detail) .. "\n") end
  local held = res.headers["grip-hold"]
  if held == "stream" then return hold(res) end
  return sluice.response(res.status, res.body, response_headers(res))
end)
