-- fuzz_cookies: the Cookie header parser; names are never empty and hold no space, "=" or ";".
local r = require "sluice.router"
return function(s)
  for k in pairs(r.parse_cookies(s)) do assert(k ~= "" and not k:find("[%s=;]")) end
end
