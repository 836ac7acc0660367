-- presence.lua: who is online, pushed to raw connections; it survives a reload.
--
-- GET /presence?name=ann joins: every client receives a "presence" event with
-- the sorted list of names whenever it changes, plus a "clock" event every five
-- seconds from a timer. POST /shout with a body sends that text to everybody.
--
-- The script keeps no table of its own: each connection carries its name in
-- conn.data, and sluice.connections() lists the live ones. Both are the
-- gateway's, so after an edit (SIGHUP or --watch) the new script sees every
-- client that joined before, and a client that leaves later is announced
-- correctly whichever version of the script it joined under.
--
-- Run:   ./build/sluice --watch examples/presence.lua
-- Try:   curl -N 'http://127.0.0.1:8080/presence?name=ann'      (in two terminals, with other names)
--        curl -d 'hello all' http://127.0.0.1:8080/shout
--        open http://127.0.0.1:8080/?name=ann in a browser (and ?name=bob in another tab)
local sluice = require "sluice"

local function online() return sluice.connections({ route = "/presence" }) end

local function names()
  local list = {}
  for _, conn in ipairs(online()) do list[#list + 1] = conn.data.name end
  table.sort(list)
  return list
end

local function broadcast(data, event)
  for _, conn in ipairs(online()) do conn:send(data, { event = event }) end
end

sluice.get("/presence", function(req)
  local name = req.query.name or ("guest-" .. math.random(1000, 9999))
  return sluice.raw(function(conn)
    conn.data.name = name
    conn:on_close(function() broadcast(names(), "presence") end)
    broadcast(names(), "presence")
  end, { heartbeat = 15 })
end)

sluice.post("/shout", function(req)
  broadcast(req.body, "shout")
  return sluice.response(202)
end)

sluice.every(5, function() broadcast({ time = os.date("!%H:%M:%S"), online = #online() }, "clock") end)

sluice.get("/health", function() return sluice.response(200, "ok") end)

-- The web page (examples/pages/presence) and the stylesheet the pages share.
sluice.static("/assets", "pages/assets")
sluice.static("/", "pages/presence")
