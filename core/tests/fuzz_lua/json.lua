-- fuzz_json: the JSON decoder as sluice.json.decode runs it (a value, or nil and why).
local cjson = require("cjson.safe").new()
return function(s)
  local v, err = cjson.decode(s)
  assert(v ~= nil or type(err) == "string")
end
