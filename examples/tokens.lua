-- tokens.lua: text streamed token by token, the way chat completions stream.
--
-- GET /chat?prompt=... answers with a stream of small "token" events, each a
-- JSON object with the next piece of text, then a final "done" event, then
-- the stream ends. The delay between tokens stands in for a model producing
-- them; a slow client pauses the generator instead of filling memory.
--
-- Run:   ./build/sluice examples/tokens.lua
-- Try:   curl -N 'http://127.0.0.1:8080/chat?prompt=hello'
--        open http://127.0.0.1:8080/ in a browser, and ask
local sluice = require "sluice"

local answer = [[Server-Sent Events keep one HTTP response open and send text events down it. ]] ..
  [[The browser's EventSource reconnects on its own, and Last-Event-ID lets the server resume.]]

local function tokens(text)
  local out = {}
  for word, space in text:gmatch("(%S+)(%s*)") do out[#out + 1] = word .. space end
  return out
end

sluice.get("/chat", function(req)
  local prompt = req.query.prompt or ""
  local toks = tokens(answer)
  return sluice.stream(coroutine.wrap(function()
    coroutine.yield(sluice.message({ prompt = prompt }, { event = "start" }))
    for i, tok in ipairs(toks) do
      sluice.sleep(0.05)
      coroutine.yield(sluice.message({ index = i, text = tok }, { event = "token", id = i }))
    end
    coroutine.yield(sluice.message({ tokens = #toks }, { event = "done" }))
  end), { heartbeat = 0 })
end)

sluice.get("/health", function() return sluice.response(200, "ok") end)

-- The web page (examples/pages/tokens) and the stylesheet the pages share.
sluice.static("/assets", "pages/assets")
sluice.static("/", "pages/tokens")
