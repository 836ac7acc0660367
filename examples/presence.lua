-- presence.lua: raw connections kept in a table and pushed to from a timer and a POST.
--
-- GET /presence?name=ann joins: the script keeps the connection handle, and
-- every client receives a "presence" event with the list of names whenever it
-- changes, plus a "clock" event every five seconds from a timer.
-- POST /shout with a body sends that text to everybody.
--
-- Run:   ./build/sluice examples/presence.lua
-- Try:   curl -N 'http://127.0.0.1:8080/presence?name=ann'      (in two terminals, with other names)
--        curl -d 'hello all' http://127.0.0.1:8080/shout
--        open http://127.0.0.1:8080/?name=ann in a browser (and ?name=bob in another tab)
local sluice = require "sluice"

local clients = {} -- conn.id -> { conn =, name = }

local function names()
  local list = {}
  for _, c in pairs(clients) do list[#list + 1] = c.name end
  table.sort(list)
  return list
end

local function broadcast(data, event)
  for _, c in pairs(clients) do c.conn:send(data, { event = event }) end
end

sluice.get("/presence", function(req)
  local name = req.query.name or ("guest-" .. math.random(1000, 9999))
  return sluice.raw(function(conn)
    clients[conn.id] = { conn = conn, name = name }
    conn:on_close(function()
      clients[conn.id] = nil
      broadcast(names(), "presence")
    end)
    broadcast(names(), "presence")
  end, { heartbeat = 15 })
end)

sluice.post("/shout", function(req)
  broadcast(req.body, "shout")
  return sluice.response(202)
end)

sluice.every(5, function() broadcast({ time = os.date("!%H:%M:%S"), online = #names() }, "clock") end)

sluice.get("/health", function() return sluice.response(200, "ok") end)

-- The web page (examples/pages/presence) and the stylesheet the pages share.
sluice.static("/assets", "pages/assets")
sluice.static("/", "pages/presence")
