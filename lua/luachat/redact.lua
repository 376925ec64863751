-- luachat.redact: the one rule that keeps credentials out of text.
--
-- Owns: what counts as a credential a client sends (its API key; the value of
-- any header or query parameter whose name says key/token/auth/secret/
-- password/cookie/credential/signature, in query = {...} or in a URL's own
-- query (a base URL "...?key=..."); URL userinfo, and the Basic
-- Authorization libcurl derives from it), the forms they may come back in
-- (percent-encoded, JSON-escaped, base64), and replacing every occurrence in
-- a string with MARK. Callers redact a whole text first and cut it after;
-- text that was already cut (a kept error body) is passed with `cut` so a
-- secret split by the cut does not leave its prefix behind.
-- Never: keeps a list of secrets anywhere (callers build one per use and drop
-- it), logs, or prints.
--
-- Short secrets: a value shorter than MIN_LEN characters is not searched for
-- in free text (a 1-character key would blank every such letter of every
-- message). Such values are still removed where their place is known: URL
-- userinfo is masked whole by M.url, and a secret-named query parameter is
-- never shown (luachat shows URLs without their query).
local M = {}

M.MARK = "[REDACTED]"
M.MIN_LEN = 4

-- Header and query parameter names that carry credentials: a substring match,
-- case-insensitive ("api-key", "x-api-key", "Authorization", "X-Auth-Token",
-- "Cookie", "client_secret", "password"), plus a few exact names.
local SECRET_WORDS = { "key", "token", "auth", "secret", "passw", "pwd", "cookie", "credential",
  "signature", "session" }
local SECRET_NAMES = { sig = true, pass = true }

function M.is_secret_name(name)
  name = tostring(name):lower()
  if SECRET_NAMES[name] then return true end
  for _, w in ipairs(SECRET_WORDS) do
    if name:find(w, 1, true) then return true end
  end
  return false
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {}
    for k = 1, 4 do
      local idx = (n >> (6 * (4 - k))) & 63
      q[k] = B64:sub(idx + 1, idx + 1)
    end
    if not b then q[3] = "=" end
    if not c then q[4] = "=" end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function percent_encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- The userinfo of an http(s) URL ("user:pass" in http://user:pass@host/...), or nil.
local function userinfo(url)
  local auth = tostring(url):match("^%a[%w+.-]*://([^/?#]*)@")
  return auth
end

-- url with its userinfo masked and its query dropped: what luachat shows of a URL.
function M.url(url)
  url = tostring(url)
  local scheme, auth, rest = url:match("^(%a[%w+.-]*://)([^/?#]*)@(.*)$")
  if scheme then url = scheme .. M.MARK .. "@" .. rest end
  return (url:gsub("[?#].*$", ""))
end

-- The query of a URL ("a=1&key=x" in http://h/v1?a=1&key=x#f) as a table of
-- decoded name -> value as sent, or nil: a base URL may carry one (Azure's
-- ?api-version=...), and its secret-named values are secrets like query = {...}.
local function url_query(url)
  local q = tostring(url):match("^[^?#]*%?([^#]*)")
  if not q or q == "" then return nil end
  local t = {}
  for pair in q:gmatch("[^&;]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if k then t[percent_decode((k:gsub("%+", " ")))] = v end -- the value as sent
  end
  return t
end

-- Add s and the forms a server may echo it in to the list `out`.
local function add(out, s)
  if type(s) ~= "string" then
    if type(s) ~= "number" then return end
    s = tostring(s)
  end
  if #s < M.MIN_LEN then return end
  out[#out + 1] = s
  local forms = {
    percent_encode(s),
    (s:gsub('[\\"]', "\\%0")),              -- inside a JSON string
    (s:gsub('[\\"]', "\\%0"):gsub("/", "\\/")), -- and with "/" escaped, as some servers do
  }
  for _, f in ipairs(forms) do
    if f ~= s then out[#out + 1] = f end
  end
end

-- A header value: the whole value, the credential after an auth scheme
-- ("Bearer sk-..."), and each cookie's value ("a=1; session=xyz").
local function add_header_value(out, v)
  v = tostring(v)
  add(out, v)
  local cred = v:match("^%a[%w!#$%%&'*+.^_`|~-]*%s+(%S.-)%s*$")
  if cred then add(out, cred) end
  for pair in v:gmatch("[^;]+") do
    local val = pair:match("^%s*[^=%s]+%s*=%s*(.-)%s*$")
    if val then add(out, val) end
  end
end

--[[
M.secrets{ key = string|nil, url = string|nil, headers = {t, ...}, query = {t, ...} } -> list
The credentials a request sends, each with its echoed forms, longest first.
headers and query are lists of name -> value tables (the client's and a call's own).
]]
function M.secrets(what)
  local out = {}
  add(out, what.key)
  for _, h in ipairs(what.headers or {}) do
    for k, v in pairs(h) do
      if M.is_secret_name(k) then add_header_value(out, v) end
    end
  end
  for _, q in ipairs(what.query or {}) do
    for k, v in pairs(q) do
      if M.is_secret_name(k) then add(out, v) end
    end
  end
  local uq = what.url and url_query(what.url)
  for k, v in pairs(uq or {}) do
    if M.is_secret_name(k) then
      add(out, v)
      add(out, percent_decode((v:gsub("%+", " "))))
    end
  end
  if what.url then
    local auth = userinfo(what.url)
    if auth and auth ~= "" then
      local user, pass = auth:match("^([^:]*):(.*)$")
      add(out, auth)
      add(out, percent_decode(auth))
      if pass then
        add(out, pass)
        add(out, percent_decode(pass))
      else
        add(out, user or auth) -- a lone userinfo is a token (https://TOKEN@host)
        user, pass = auth, ""
      end
      -- libcurl sends userinfo as "Authorization: Basic base64(user:pass)", decoded.
      add(out, base64(percent_decode(user) .. ":" .. percent_decode(pass)))
    end
  end
  -- Longest first, no duplicates: a secret containing another is found whole.
  table.sort(out, function(a, b) return #a > #b or (#a == #b and a < b) end)
  local uniq = {}
  for _, s in ipairs(out) do
    if s ~= uniq[#uniq] then uniq[#uniq + 1] = s end
  end
  return uniq
end

-- Does a request described as for M.secrets send any credential besides `key`
-- (a secret-named header or query parameter, URL userinfo), whatever its length?
function M.has_credential(what)
  for _, list in ipairs { what.headers or {}, what.query or {} } do
    for _, t in ipairs(list) do
      for k in pairs(t) do
        if M.is_secret_name(k) then return true end
      end
    end
  end
  if what.url == nil then return false end
  for k in pairs(url_query(what.url) or {}) do
    if M.is_secret_name(k) then return true end
  end
  return userinfo(what.url) ~= nil
end

--[[
M.text(s, list, cut) -> s with every occurrence of every secret in list replaced by MARK.
Occurrences may overlap (two secrets sharing characters): their union is replaced,
so no part of either is left. cut = true says s was cut at its end: a tail that is
the beginning of a secret is replaced too. Non-strings are returned as they are.
]]
function M.text(s, list, cut)
  if type(s) ~= "string" or not list or #list == 0 or s == "" then return s end
  local spans = {}
  for _, secret in ipairs(list) do
    local i = 1
    while true do
      local a, b = s:find(secret, i, true)
      if not a then break end
      spans[#spans + 1] = { a, b }
      i = a + 1
    end
    if cut then
      for k = math.min(#secret - 1, #s), 1, -1 do
        if s:sub(-k) == secret:sub(1, k) then
          spans[#spans + 1] = { #s - k + 1, #s }
          break
        end
      end
    end
  end
  if #spans == 0 then return s end
  table.sort(spans, function(x, y) return x[1] < y[1] end)
  local parts, pos = {}, 1
  local a, b = spans[1][1], spans[1][2]
  for n = 2, #spans + 1 do
    local sp = spans[n]
    if sp and sp[1] <= b + 1 then
      if sp[2] > b then b = sp[2] end
    else
      parts[#parts + 1] = s:sub(pos, a - 1)
      parts[#parts + 1] = M.MARK
      pos = b + 1
      if sp then a, b = sp[1], sp[2] end
    end
  end
  parts[#parts + 1] = s:sub(pos)
  return table.concat(parts)
end

return M
