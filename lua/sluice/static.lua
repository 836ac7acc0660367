--- sluice.static: serves the files under a folder at a URL prefix, for an
-- app's web page and its assets. GET and HEAD; content type by extension;
-- index.html for a folder; ETag and Last-Modified with 304; nothing outside
-- the folder (no "..", no encoded dots or slashes, no symlink that leads out).
-- Files are read whole and kept in memory until they change: this is for
-- pages and small assets (at most 8 MiB a file), not for bulk downloads.
local core = require "sluice.core"

local type, error, concat, format, lower, find, date = type, error, table.concat, string.format, string.lower, string.find, os.date

local _M = {}
local MAX_FILE = 8 * 1024 * 1024

_M.types = {
  html = "text/html; charset=utf-8", htm = "text/html; charset=utf-8", css = "text/css; charset=utf-8",
  js = "text/javascript; charset=utf-8", mjs = "text/javascript; charset=utf-8",
  json = "application/json", map = "application/json", txt = "text/plain; charset=utf-8",
  md = "text/markdown; charset=utf-8", xml = "application/xml", svg = "image/svg+xml",
  png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif", webp = "image/webp",
  ico = "image/x-icon", avif = "image/avif", woff = "font/woff", woff2 = "font/woff2",
  wasm = "application/wasm", pdf = "application/pdf", mp4 = "video/mp4", webm = "video/webm",
  mp3 = "audio/mpeg", ogg = "audio/ogg", wav = "audio/wav",
}

local function content_type(path)
  local ext = path:match("%.([%w]+)$")
  return ext and _M.types[lower(ext)] or "application/octet-stream"
end

local function http_date(t) return date("!%a, %d %b %Y %H:%M:%S GMT", t) end

local months = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }
local function parse_http_date(s)
  if type(s) ~= "string" then return nil end
  local d, mon, y, h, mi, sec = s:match("^%a+, (%d+) (%a+) (%d+) (%d+):(%d+):(%d+) GMT$")
  if not d or not months[mon] then return nil end
  -- os.time reads local time: correct by the offset of the epoch in local time
  local t = os.time { year = tonumber(y), month = months[mon], day = tonumber(d), hour = tonumber(h), min = tonumber(mi), sec = tonumber(sec) }
  local utc0 = os.time(os.date("!*t", 0))
  return t and (t - utc0)
end

--- A segment is safe when it cannot step out of or hide in the folder.
local function safe_segment(seg)
  return seg ~= "" and seg ~= "." and seg ~= ".." and not find(seg, "[/\\%c]")
end

--- Returns a handler serving dir (an absolute, canonical path).
function _M.handler(prefix, dir, response)
  local cache = {} -- real path -> { size, mtime, body, etag }
  return function(req)
    local rest = req.params["*"] or ""
    local segs = {}
    for seg in (rest .. "/"):gmatch("([^/]*)/") do segs[#segs + 1] = seg end
    if segs[#segs] == "" then segs[#segs] = nil end -- a trailing slash
    for i = 1, #segs do
      if not safe_segment(segs[i]) then return response(404, "Not Found\n") end
    end
    local rel = concat(segs, "/")
    local path = rel == "" and dir or (dir .. "/" .. rel)
    local real = core.realpath(path)
    if not real or (real ~= dir and real:sub(1, #dir + 1) ~= dir .. "/") then return response(404, "Not Found\n") end
    local kind, size, mtime = core.stat(real)
    if kind == "dir" then
      if req.path:sub(-1) ~= "/" then
        -- relative links in the folder's index.html need the trailing slash
        return response(301, "", { Location = req.path .. "/" })
      end
      real = real .. "/index.html"
      kind, size, mtime = core.stat(real)
      if kind == "file" then
        local again = core.realpath(real)
        if not again or again:sub(1, #dir + 1) ~= dir .. "/" then return response(404, "Not Found\n") end
      end
    end
    if kind ~= "file" then return response(404, "Not Found\n") end
    local entry = cache[real]
    if not entry or entry.size ~= size or entry.mtime ~= mtime then
      local body, err = core.read_file(real, MAX_FILE)
      if not body then return response(404, "Not Found\n") end
      entry = { size = size, mtime = mtime, body = body, etag = format('W/"%x-%x"', size, mtime) }
      cache[real] = entry
    end
    local headers = {
      ["Content-Type"] = content_type(real),
      ["ETag"] = entry.etag,
      ["Last-Modified"] = http_date(mtime),
      ["Cache-Control"] = "no-cache",
    }
    local inm = req.headers["if-none-match"]
    if inm then
      for tag in inm:gmatch("[^,%s]+") do
        if tag == entry.etag or tag == "*" then return response(304, "", headers) end
      end
    else
      local since = parse_http_date(req.headers["if-modified-since"])
      if since and mtime <= since then return response(304, "", headers) end
    end
    return response(200, entry.body, headers)
  end
end

--- The folder a prefix serves, resolved against the script's folder.
function _M.resolve(dir)
  if type(dir) ~= "string" or dir == "" then error("sluice.static expects a folder", 3) end
  local abs = dir:sub(1, 1) == "/" and dir or (core.script_dir .. "/" .. dir)
  local real = core.realpath(abs)
  if not real or core.stat(real) ~= "dir" then error("sluice.static: no such folder: " .. abs, 3) end
  return real
end

return _M
