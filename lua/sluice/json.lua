--- sluice.json: JSON for route scripts. encode is the gateway's own (sluice.text):
-- slashes are not escaped, whole numbers are written in full, and an empty
-- table is an object unless it is marked as an array (json.empty_array, or a
-- table with json.array_mt). It raises for values JSON cannot hold. decode is
-- lua-cjson's, in an instance of its own (a script's cjson settings change
-- nothing here), and returns nil, err for bad text.
local text = require "sluice.text"
local cjson = require "cjson"

local _M = {}
local safe = require("cjson.safe").new()

_M.encode = text.encode
_M.null = cjson.null
_M.empty_array = text.empty_array
_M.array_mt = text.array_mt

--- json.array(t): marks t (a new table if nil) as an array, so it encodes as [] when empty.
function _M.array(t) return setmetatable(t or {}, text.array_mt) end

function _M.decode(text_)
  if type(text_) ~= "string" then return nil, "expected a string" end
  return safe.decode(text_)
end

return _M
