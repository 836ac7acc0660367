--- sluice.json: JSON through lua-cjson, in an instance of its own so a
-- script's own cjson settings do not change how events are encoded.
-- encode raises for values JSON cannot hold; decode returns nil, err for bad text.
local cjson = require "cjson"

local _M = {}
local inst = cjson.new()
inst.encode_sparse_array(true)
local safe = require("cjson.safe").new()

_M.encode = inst.encode
_M.null = inst.null

function _M.decode(text)
  if type(text) ~= "string" then return nil, "expected a string" end
  return safe.decode(text)
end

return _M
