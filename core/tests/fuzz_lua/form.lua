-- fuzz_form: the query string and form decoder, and the path splitter.
local r = require "sluice.router"
return function(s)
  local q = r.parse_query(s)
  assert(q == nil or type(q) == "table")
  local segs, path = r.split("/" .. s)
  assert(segs == nil or type(path) == "string")
end
