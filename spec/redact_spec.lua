-- Redaction of every credential a client sends (issue 13 item 3, issue 20's
-- redaction rows): the API key, secret-named headers (api-key, x-api-key,
-- Authorization, Cookie) and query parameters (key=, token=), URL userinfo
-- (and the Basic header libcurl derives from it), in every occurrence, in
-- in-band stream errors, before any cut (200 characters, 64 KiB), and in the
-- command line's output. The test server echoes the request's own headers and
-- query into its error bodies ({{header:NAME}}, {{query}}).
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local luachat = require "luachat"
local core = require "luachat.core"
local redact = require "luachat.redact"

local KEY = "sk-redact-SECRET-7777777777"
local HOST = proc.host

local function b64(s)
  local p = io.popen("printf %s " .. proc.shell_quote(s) .. " | base64 -w0")
  local out = p:read("a")
  p:close()
  return out
end

-- No part of the error (tostring, message, body, code) contains any of the strings.
local function assert_clean(err, ...)
  assert.is_table(err)
  local texts = { tostring(err), tostring(err.message), tostring(err.body), tostring(err.code) }
  for _, secret in ipairs { ... } do
    for _, t in ipairs(texts) do
      local at = t:find(secret, 1, true)
      assert.is_nil(at, "leaked '" .. secret .. "' in: ..." .. t:sub((at or 1) - 80, (at or 1) + 80) .. "...")
    end
  end
end

-- text contains none of the strings (the leak shown in context).
local function assert_absent(text, ...)
  for _, secret in ipairs { ... } do
    local at = text:find(secret, 1, true)
    assert.is_nil(at, "leaked '" .. secret .. "' in: ..." .. text:sub((at or 1) - 200, (at or 1) + 200) .. "...")
  end
end

local function count(s, sub)
  local n, i = 0, 1
  while true do
    local a, b = s:find(sub, i, true)
    if not a then return n end
    n, i = n + 1, b + 1
  end
end

describe("luachat.redact", function()
  it("replaces every occurrence, not only the first", function()
    local list = redact.secrets { key = "abcd-1234" }
    assert.equal("x [REDACTED] y [REDACTED] z [REDACTED]",
      redact.text("x abcd-1234 y abcd-1234 z abcd-1234", list))
  end)

  it("overlapping secrets are removed whole (their union)", function()
    local list = redact.secrets { key = "abcdef", headers = { { ["x-api-key"] = "defghi" } } }
    assert.equal("<[REDACTED]>", redact.text("<abcdefghi>", list))
  end)

  it("a cut text loses the beginning of a secret at its end", function()
    local list = redact.secrets { key = "SECRETKEY123" }
    assert.equal("body [REDACTED]", redact.text("body SECRETK", list, true))
    assert.equal("body SECRETK", redact.text("body SECRETK", list, false)) -- not cut: not a secret
  end)

  it("names that say key/token/auth/secret/password/cookie are secret names", function()
    for _, n in ipairs { "api-key", "X-API-Key", "Authorization", "x-auth-token", "Cookie", "client_secret",
      "password", "key", "token", "sig" } do
      assert.is_true(redact.is_secret_name(n), n)
    end
    for _, n in ipairs { "api-version", "OpenAI-Organization", "Accept", "model" } do
      assert.is_false(redact.is_secret_name(n), n)
    end
  end)

  it("header values: the whole value, the credential after the scheme, each cookie", function()
    local list = redact.secrets { headers = { { Authorization = "Bearer tok-123456", Cookie = "a=1; sess=cookieval9" } } }
    assert.equal("[REDACTED] [REDACTED] [REDACTED]", redact.text("Bearer tok-123456 tok-123456 cookieval9", list))
  end)

  it("urls: userinfo masked and the query dropped; userinfo parts and Basic form are secrets", function()
    assert.equal("http://[REDACTED]@h:1/v1", redact.url("http://user:pa%40ss@h:1/v1?key=x"))
    assert.equal("https://h/v1", redact.url("https://h/v1?token=abc"))
    local list = redact.secrets { url = "http://user:pa%40ssword@h/v1" }
    assert.equal("[REDACTED] [REDACTED] [REDACTED]", redact.text("pa@ssword pa%40ssword " .. b64("user:pa@ssword"), list))
  end)

  it("short secrets (under MIN_LEN) are not searched in free text", function()
    local list = redact.secrets { key = "abc", headers = { { ["x-api-key"] = "q" } } }
    assert.equal(0, #list)
    assert.equal("abc q", redact.text("abc q", list))
    assert.equal(4, redact.MIN_LEN)
  end)
end)

describe("redaction outside requests", function()
  it("a bad base_url in a Lua error shows no userinfo", function()
    local ok, msg = pcall(luachat.client, { base_url = "ftp://erin:PASS-arg-1414@h/v1" })
    assert.is_false(ok)
    assert.matches("ftp://[REDACTED]@h/v1", msg, 1, true)
    assert.is_nil(msg:find("PASS-arg-1414", 1, true))
  end)

  it("a bad base_url shows no credential the client would send (a key pasted in the wrong place)", function()
    for _, opts in ipairs {
      { base_url = "sk-pasted-KEY-2020", api_key = "sk-pasted-KEY-2020" },
      { base_url = "x-sk-pasted-KEY-2020/v1", headers = { ["api-key"] = "sk-pasted-KEY-2020" } },
      { base_url = "h/sk-pasted-KEY-2020/v1", query = { key = "sk-pasted-KEY-2020" } },
    } do
      local ok, msg = pcall(luachat.client, opts)
      assert.is_false(ok)
      assert.matches("base_url must start with http:// or https://, got '", msg, 1, true)
      assert.matches("[REDACTED]", msg, 1, true)
      assert.is_nil(msg:find("pasted-KEY", 1, true), msg)
    end
    -- the environment's key too, as the command line's --base-url "$OPENAI_API_KEY" would hit it
    local code = [[
      local ok, msg = pcall(require("luachat").client, { base_url = os.getenv("OPENAI_API_KEY") })
      io.write(msg)]]
    local out = proc.run(string.format("OPENAI_API_KEY=sk-env-KEY-2121 %s -e %s", HOST, proc.shell_quote(code)))
    assert.matches("got '[REDACTED]'", out, 1, true)
    assert.is_nil(out:find("env-KEY", 1, true), out)
  end)

  it("the command line's error line redacts what its settings send, before cutting to 240", function()
    local cli_error = require "luachat.cli_error"
    local s = { profile = "p", api_key = KEY, base_url = "http://u:PASS-line-1515@h/v1",
      headers = { ["x-api-key"] = "xk-LINE-1616" }, query = { token = "tk-LINE-1717" } }
    local msg = string.rep("m", 230) .. KEY .. " PASS-line-1515 xk-LINE-1616 tk-LINE-1717"
    local line = cli_error.format_error({ kind = "network", message = msg }, s)
    assert_absent(line, KEY:sub(1, 6), "PASS-line", "xk-LINE", "tk-LINE")
    assert.matches("http://[REDACTED]@h/v1", line, 1, true) -- the 'cannot reach' hint
  end)
end)

describe("redaction in client errors", function()
  local srv
  setup(function() srv = server.start() end)
  teardown(function() srv:stop() end)
  before_each(function() srv:reset() end)
  after_each(function() assert.equal(0, core.live()) end)

  local function client(opts)
    opts = opts or {}
    opts.base_url = opts.base_url or srv.base_url
    if opts.api_key == nil then opts.api_key = KEY end
    opts.max_retries = 0
    return luachat.client(opts)
  end

  it("the key twice in a 401 body: every occurrence redacted", function()
    srv:script { { status = 401, json = { error = { message = "bad key " .. KEY .. " (you sent " .. KEY .. ")" } } } }
    local _, err = client():chat { model = "m", messages = {} }
    assert.equal("invalid_api_key", err.kind)
    assert_clean(err, KEY)
    assert.equal(2, count(err.message, "[REDACTED]"))
    assert.equal(2, count(err.body, "[REDACTED]"))
  end)

  it("an in-band stream error echoing the key (twice): redacted in message and body", function()
    srv:script { { sse = {
      { json = { choices = { { index = 0, delta = { content = "hi" } } } } },
      { json = { error = { message = "key " .. KEY .. " over quota; key " .. KEY, code = "quota " .. KEY } } },
    } } }
    local final, err = client():stream({ model = "m", messages = {} })
    assert.equal("api", err.kind)
    assert_clean(err, KEY)
    assert.equal(2, count(err.message, "[REDACTED]"))
    assert.equal(3, count(err.body, "[REDACTED]")) -- message twice, code once
    assert.equal("quota [REDACTED]", err.code)
    assert.equal("hi", final.choices[1].message.content)
  end)

  it("an in-band error without a message (encoded, '/' escaped) and a named error event", function()
    local key = "sk-slash/KEY+abc/777"
    srv:script {
      { sse = { { json = { error = { detail = "bad " .. key } } } } },
      { sse = { { event = "error", data = '{"error":{"message":"bad ' .. key .. ' ' .. key .. '"}}' } } },
    }
    local _, err = client { api_key = key }:stream({ model = "m", messages = {} })
    assert.equal("api", err.kind)
    assert_clean(err, key, (key:gsub("/", "\\/")))
    local _, err2 = client { api_key = key }:stream({ model = "m", messages = {} })
    assert.equal("api", err2.kind)
    assert_clean(err2, key)
    assert.equal(2, count(err2.message, "[REDACTED]"))
  end)

  it("x-api-key, Authorization and Cookie given in headers (client and call) are redacted", function()
    local XKEY, AUTH, CALLTOK, COOKIE = "xk-HEADER-5151", "Bearer auth-HEADER-6262", "call-TOKEN-7373", "cookie-VAL-8484"
    srv:script { { status = 403, json = { error = { message =
      "x-api-key={{header:x-api-key}} auth={{header:authorization}} tok={{header:x-auth-token}} "
      .. "cookie={{header:cookie}}" } } } }
    local c = client { api_key = false, headers = { ["x-api-key"] = XKEY, Authorization = AUTH, Cookie = "sid=" .. COOKIE } }
    local _, err = c:chat({ model = "m", messages = {} }, { headers = { ["X-Auth-Token"] = CALLTOK } })
    assert.equal(403, err.status)
    assert.equal(XKEY, srv:requests()[1].headers["x-api-key"]) -- the server did echo them
    assert_clean(err, XKEY, "auth-HEADER-6262", CALLTOK, COOKIE)
    assert.matches("x-api-key=[REDACTED]", err.message, 1, true)
  end)

  it("the same headers in a stream's error status", function()
    local XKEY = "xk-STREAM-9191"
    srv:script { { status = 401, json = { error = { message = "bad {{header:x-api-key}}" } } } }
    local _, err = client { api_key = false, headers = { ["x-api-key"] = XKEY } }:stream({ model = "m", messages = {} })
    assert.equal("invalid_api_key", err.kind)
    assert_clean(err, XKEY)
    -- a key in a header is a key: no "set OPENAI_API_KEY" hint
    assert.is_nil(err.message:find("OPENAI_API_KEY", 1, true))
  end)

  it("the 'set OPENAI_API_KEY' hint only when no credential is sent at all #once", function()
    srv:default { status = 401, json = { error = { message = "no" } } }
    local script = string.format([[
      local luachat = require "luachat"
      local url = %q
      for _, opts in ipairs {
        { base_url = url },                                            -- nothing: hint
        { base_url = url, headers = { ["x-api-key"] = "xk-HINT-1818" } }, -- a key in a header
        { base_url = url:gsub("^http://", "http://u:PASS-hint-1919@") },  -- userinfo
        { base_url = url, api_key = false },                             -- explicitly none
      } do
        local _, e = luachat.client(opts):chat{ model = "m", messages = {} }
        print(e.message)
      end
    ]], srv.base_url)
    local out, err, code = proc.run(string.format("env -u OPENAI_API_KEY %s -e %s", HOST, proc.shell_quote(script)))
    assert.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(4, #lines, out)
    assert.matches("(no API key: set OPENAI_API_KEY)", lines[1], 1, true)
    for i = 2, 4 do assert.is_nil(lines[i]:find("OPENAI_API_KEY", 1, true), lines[i]) end
  end)

  it("URL userinfo: not in tostring(client), messages, or the echoed Basic header", function()
    local url = srv.base_url:gsub("^http://", "http://alice:PASS-userinfo-4343@")
    srv:script { { status = 401, json = { error = { message = "you sent {{header:authorization}}" } } } }
    local c = client { base_url = url, api_key = false }
    assert.is_nil(tostring(c):find("PASS-userinfo", 1, true))
    local _, err = c:chat { model = "m", messages = {} }
    assert.equal(401, err.status)
    assert.matches("Basic", err.message, 1, true) -- curl sent the userinfo as Basic auth
    assert_clean(err, "PASS-userinfo-4343", b64("alice:PASS-userinfo-4343"))
    assert.is_nil(err.message:find("OPENAI_API_KEY", 1, true))
    -- a network error names the URL without its userinfo
    local bad = client { base_url = "http://bob:PASS-net-5454@127.0.0.1:1/v1" }
    local _, nerr = bad:chat { model = "m", messages = {} }
    assert.equal("network", nerr.kind)
    assert.matches("http://[REDACTED]@127.0.0.1:1/v1", nerr.message, 1, true)
    assert_clean(nerr, "PASS-net-5454")
  end)

  it("a secret-named query parameter (?key=) echoed by the server is redacted", function()
    local QKEY = "qk-QUERY-2727"
    srv:script { { status = 400, json = { error = { message = "query was {{query}}" } } } }
    local _, err = client { query = { key = QKEY, ["api-version"] = "v1" } }:chat({ model = "m", messages = {} },
      { query = { access_token = "at-QUERY-3838" } })
    assert.equal(400, err.status)
    assert.matches("api-version=v1", err.message, 1, true)
    assert_clean(err, QKEY, "at-QUERY-3838")
    -- a stream's error: redacted from the client's and the call's query tables alone
    srv:script { { status = 400, json = { error = { message = "query was {{query}}" } } } }
    local _, serr = client { query = { key = QKEY } }:stream({ model = "m", messages = {} }, function() end,
      { query = { access_token = "at-QUERY-3838" } })
    assert.equal(400, serr.status)
    assert.matches("query was", serr.message, 1, true)
    assert_clean(serr, QKEY, "at-QUERY-3838")
  end)

  it("a query in base_url: the path goes before it, it is sent, and its secrets are redacted", function()
    local QQ = "QQsecret-base-7777"
    srv:script { { status = 400, json = { error = { message = "query was {{query}}" } } } }
    local c = client { base_url = srv.base_url .. "/?api-version=2024-06&key=" .. QQ, query = { a = "1" } }
    local _, err = c:chat({ model = "m", messages = {} }, { query = { b = "2" } })
    local req = srv:requests()[1]
    assert.equal("/v1/chat/completions", req.path)
    assert.equal("api-version=2024-06&key=" .. QQ .. "&a=1&b=2", req.query)
    assert.equal(400, err.status)
    assert.matches("api-version=2024-06", err.message, 1, true)
    assert.matches("key=[REDACTED]", err.message, 1, true)
    assert_clean(err, QQ)
    assert.is_nil(tostring(c):find(QQ, 1, true))
    assert.is_true(redact.has_credential { url = "http://h/v1?api_key=x" })
    assert.is_false(redact.has_credential { url = "http://h/v1?api-version=x" })
  end)

  it("a key straddling the 200-character cut of a plain-text message leaves no prefix", function()
    local line = string.rep("x", 190) .. KEY .. " tail"
    srv:script { { status = 401, body = line, content_type = "text/plain" } }
    local _, err = client():chat { model = "m", messages = {} }
    assert.equal(401, err.status)
    assert_clean(err, KEY:sub(1, 6))
    assert.matches("[REDA", err.message, 1, true)
  end)

  it("a key straddling the 64 KiB kept error body leaves no prefix", function()
    local body = string.rep("y", 65536 - 12) .. KEY .. string.rep("z", 100)
    srv:script { { status = 500, body = body, content_type = "text/plain" } }
    local _, err = client():chat { model = "m", messages = {} }
    assert.equal(500, err.status)
    assert_clean(err, KEY:sub(1, 6))
    assert.equal(string.rep("y", 65536 - 12) .. "[REDACTED]", err.body)
  end)

  it("a body cut by a dropped connection inside a key leaves no prefix", function()
    local body = '{"error":{"message":"' .. KEY .. '"}}'
    srv:script { { status = 500, body = body, content_type = "application/json", close_after_body = 22 + 10 } }
    local _, err = client():chat { model = "m", messages = {} }
    assert.equal("network", err.kind)
    assert.equal('{"error":{"message":"[REDACTED]', err.body) -- the 10 bytes of the key that arrived
    assert_clean(err, KEY:sub(1, 6))
  end)

  it("a key straddling the 64 KiB cut of an invalid body (JSON or event) leaves no prefix", function()
    local body = string.rep("w", 65536 - 9) .. KEY .. string.rep("v", 100)
    srv:script {
      { status = 200, body = body, content_type = "application/json" },
      { sse = { { data = body } } },
    }
    local _, err = client():chat { model = "m", messages = {} }
    assert.equal("deserialise", err.kind)
    assert_clean(err, KEY:sub(1, 6))
    local _, serr = client():stream({ model = "m", messages = {} })
    assert.equal("deserialise", serr.kind)
    assert_clean(serr, KEY:sub(1, 6))
  end)
end)

describe("redaction in logs and on the command line #once", function()
  local srv
  setup(function() srv = server.start() end)
  teardown(function() srv:stop() end)
  before_each(function() srv:reset() end)

  it("LUACHAT_LOG=debug: URL userinfo and query secrets never appear", function()
    local url = srv.base_url:gsub("^http://", "http://carol:PASS-log-6565@")
    srv:script {
      { status = 500, json = { error = { message = "echo {{header:authorization}} {{query}}" } }, headers = { ["retry-after-ms"] = "1" } },
      { sse = { { json = { error = { message = "in-band {{header:authorization}}" } } } } },
    }
    local script = string.format([[
      local luachat = require "luachat"
      local c = luachat.client{ base_url = %q, api_key = false, query = { key = "qk-LOG-1212" }, max_retries = 1 }
      print(c)
      local _, e = c:chat{ model = "m", messages = {} }
      print(e, e.body)
      local _, e2 = c:stream({ model = "m", messages = {} })
      print(e2, e2.body)
    ]], url)
    local out, errout, code = proc.run(string.format("LUACHAT_LOG=debug %s -e %s", HOST, proc.shell_quote(script)))
    local text = out .. errout
    assert.equal(0, code, text)
    assert.matches("luachat[debug]", text, 1, true)
    assert.matches("http://[REDACTED]@127.0.0.1", text, 1, true)
    assert_absent(text, "PASS-log-6565", b64("carol:PASS-log-6565"), "qk-LOG-1212")
  end)

  it("azure profile: the api-key echoed by the server is redacted, and the hint names AZURE_OPENAI_API_KEY", function()
    local AZKEY = "AZSECRET-cli-999"
    srv:default { status = 401, json = { error = { message = "bad key api-key={{header:api-key}} again {{header:api-key}}" } } }
    local env = string.format("env -i PATH=%s HOME=/nonexistent AZURE_OPENAI_API_KEY=%s AZURE_OPENAI_DEPLOYMENT=dep "
      .. "LUACHAT_BASE_URL=%s LUACHAT_LOG=debug", proc.shell_quote(os.getenv("PATH")), AZKEY, srv.base_url)
    for _, mode in ipairs { "-p hi", "--no-stream -p hi" } do
      local out, err, code = proc.run(string.format("%s %s -P azure %s", env, HOST, mode))
      local text = out .. err
      assert.equal(AZKEY, srv:requests()[#srv:requests()].headers["api-key"])
      assert.equal(1, code, text)
      assert_absent(text, AZKEY)
      assert.is_nil(text:find("OPENAI_API_KEY)", 1, true), text)
      assert.is_nil(text:find("set OPENAI_API_KEY", 1, true), text)
      assert.matches("api-key=[REDACTED]", text, 1, true)
      assert.matches("AZURE_OPENAI_API_KEY", text, 1, true)
    end
  end)

  it("--base-url with a secret query: sent after the path, redacted in the error and debug lines", function()
    local QQ = "QQsecret77-cli"
    srv:default { status = 401, json = { error = { message = "you sent {{query}}" } } }
    for _, mode in ipairs { "-p hi", "--no-stream -p hi" } do
      local out, err, code = proc.run(string.format("env -i PATH=%s HOME=/nonexistent LUACHAT_LOG=debug %s --base-url %s -m m %s",
        proc.shell_quote(os.getenv("PATH")), HOST, proc.shell_quote(srv.base_url .. "?key=" .. QQ), mode))
      local text = out .. err
      local req = srv:requests()[#srv:requests()]
      assert.equal("/v1/chat/completions", req.path)
      assert.equal("key=" .. QQ, req.query)
      assert.equal(1, code, text)
      assert.matches("key=[REDACTED]", text, 1, true)
      assert.matches("luachat[debug]", text, 1, true)
      assert_absent(text, QQ)
    end
  end)

  it("--base-url with userinfo: the 'cannot reach' hint shows no password", function()
    local out, err, code = proc.run(string.format("env -i PATH=%s HOME=/nonexistent %s --base-url %s -m m -p hi",
      proc.shell_quote(os.getenv("PATH")), HOST, "http://dave:PASS-cli-8686@127.0.0.1:1/v1"))
    local text = out .. err
    assert.equal(1, code, text)
    assert.matches("cannot reach", text, 1, true)
    assert_absent(text, "PASS-cli-8686")
  end)
end)
