-- chat.lua: pub/sub with history. Anyone may read a room; posting needs a token.
--
-- GET  /events/:room              subscribes to the room: every message posted there,
--                                 and, when reconnecting with Last-Event-ID, the ones missed
--                                 (the last 200 are kept for an hour)
-- POST /publish/:room             posts the body (JSON {"user":..,"text":..} or plain text);
--                                 needs "Authorization: Bearer $CHAT_TOKEN", compared in constant time
-- GET  /rooms/:room/online        how many are reading the room now (on this node)
-- GET  /                          a page to read and post (examples/pages/chat; ?room=NAME)
--
-- Run:   CHAT_TOKEN=secret ./build/sluice examples/chat.lua
-- Try:   curl -N http://127.0.0.1:8080/events/lobby
--        curl -H 'Authorization: Bearer secret' -d '{"user":"ann","text":"hi"}' http://127.0.0.1:8080/publish/lobby
--        open http://127.0.0.1:8080/ in two browser tabs, give the token, and talk
-- Scale: run it on several nodes with --redis redis://HOST:PORT; a post on one
--        node reaches readers on all. While Redis is unreachable, POST answers 503.
local sluice = require "sluice"

local TOKEN = os.getenv("CHAT_TOKEN")
if not TOKEN or TOKEN == "" then
  sluice.log.warn("CHAT_TOKEN is not set: POST /publish answers 503 until it is")
end

sluice.configure { history = 200, history_ttl = 3600, heartbeat = 15 }

local function room_ok(room) return #room <= 64 and room:match("^[%w_-]+$") ~= nil end

sluice.get("/events/:room", function(req)
  if not room_ok(req.params.room) then return sluice.response(400, "bad room name\n") end
  return sluice.subscribe("room-" .. req.params.room)
end)

sluice.post("/publish/:room", function(req)
  if not TOKEN or TOKEN == "" then return sluice.response(503, "publishing is not configured\n") end
  local auth = req.headers.authorization or ""
  if not sluice.secure_compare(auth, "Bearer " .. TOKEN) then
    return sluice.response(401, "bad or missing token\n", { ["WWW-Authenticate"] = "Bearer" })
  end
  if not room_ok(req.params.room) then return sluice.response(400, "bad room name\n") end
  local msg = sluice.json.decode(req.body)
  if type(msg) ~= "table" then msg = { text = req.body } end
  local text = tostring(msg.text or "")
  if text == "" then return sluice.response(400, "empty message\n") end
  local id, err = sluice.publish("room-" .. req.params.room,
    { user = tostring(msg.user or "anonymous"):sub(1, 32), text = text:sub(1, 2000), at = os.time() },
    { event = "message" })
  -- With --redis, a publish fails (nil, err) while Redis is unreachable: say so, and the client may retry.
  if not id then return sluice.response(503, { error = err }, { ["Retry-After"] = "1" }) end
  return sluice.response(202, { id = id })
end)

sluice.get("/rooms/:room/online", function(req)
  return sluice.response(200, { online = sluice.subscribers("room-" .. req.params.room) })
end)

sluice.get("/health", function() return sluice.response(200, "ok") end)

-- The web page (examples/pages/chat) and the stylesheet the pages share.
sluice.static("/assets", "pages/assets")
sluice.static("/", "pages/chat")
