-- Secrets and transport security: TLS verification on by default against a
-- local self-signed HTTPS server, ca_file for private CAs, redirects never
-- followed (the key never reaches another host), the key never printed.
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"

local KEY = "sk-security-SECRET-4242424242"
local HOST = os.getenv("LUACHAT_HOST") or "./luachat"
local completion = { json = { id = "x", object = "chat.completion", created = 1, model = "m",
  choices = { { index = 0, message = { role = "assistant", content = "over tls" }, finish_reason = "stop" } } } }

local function have(cmd) return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == true end

describe("security", function()
  after_each(function() assert.equal(0, core.live()) end)

  describe("TLS", function()
    local srv, dir
    setup(function()
      assert(have("openssl"), "openssl is not installed (scripts/deps.sh installs it)")
      dir = os.tmpname()
      os.remove(dir)
      os.execute("mkdir -p " .. dir)
      assert(os.execute(string.format("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 "
        .. "-addext subjectAltName=IP:127.0.0.1 -days 1 -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1", dir, dir)))
      srv = server.start { tls = { cert = dir .. "/cert.pem", key = dir .. "/key.pem" } }
    end)
    teardown(function()
      if srv then srv:stop() end
      if dir then os.execute("rm -rf " .. dir) end
    end)

    it("verification is on: a self-signed server is refused with a clear error", function()
      if not srv then error("no TLS test server (openssl is not installed?)") end
      srv:default(completion)
      local _, err = luachat.client { base_url = srv.base_url, api_key = KEY, max_retries = 0 }:chat { model = "m", messages = {} }
      assert.equal("network", err.kind)
      assert.matches("certificate", err.message:lower(), 1, true)
      assert.matches("ca_file", err.message, 1, true)
      assert.is_nil(err.message:find(KEY, 1, true))
      assert.equal(0, #srv:requests()) -- nothing, the key least of all, was sent
    end)

    it("ca_file trusts a private CA", function()
      if not srv then error("no TLS test server (openssl is not installed?)") end
      srv:default(completion)
      local res, err = luachat.client { base_url = srv.base_url, api_key = KEY, ca_file = dir .. "/cert.pem" }
        :chat { model = "m", messages = {} }
      assert.is_nil(err)
      assert.equal("over tls", res.choices[1].message.content)
      assert.equal("Bearer " .. KEY, srv:requests()[1].headers["authorization"])
    end)
  end)

  describe("redirects", function()
    local srv, other
    setup(function()
      srv = server.start()
      other = server.start()
    end)
    teardown(function()
      srv:stop()
      other:stop()
    end)

    it("are not followed: the key is never sent to another host", function()
      srv:default { status = 307, headers = { Location = other.base_url .. "/chat/completions" }, body = "" }
      other:default(completion)
      local _, err = luachat.client { base_url = srv.base_url, api_key = KEY }:chat { model = "m", messages = {} }
      assert.equal("api", err.kind)
      assert.equal(307, err.status)
      assert.equal(0, #other:requests())
    end)
  end)

  it("the key appears nowhere on stdout or stderr, with LUACHAT_LOG=debug, in errors and tracebacks #once", function()
    local srv = server.start()
    srv:script {
      { status = 401, json = { error = { message = "Incorrect API key provided: " .. KEY } } },
      { status = 500, json = { error = { message = "echo " .. KEY } }, headers = { ["retry-after-ms"] = "1" } },
      { status = 500, json = { error = { message = "echo " .. KEY } }, headers = { ["retry-after-ms"] = "1" } },
      { status = 500, json = { error = { message = "echo " .. KEY } }, headers = { ["retry-after-ms"] = "1" } },
      { body = 'data: {"choices":[{"index":0,"delta":{"content":"' .. KEY .. '"}}]}\n\ndata: {"choi', content_type = "text/event-stream", close_after_body = 80 },
    }
    local script = string.format([[
      local luachat = require "luachat"
      local c = luachat.client{ base_url = %q, api_key = %q }
      print(c)
      local _, e1 = c:chat{ model = "m", messages = {} }
      print(e1, e1.message, e1.body)
      local _, e2 = c:chat{ model = "m", messages = {} }
      print(e2, e2.body)
      local bad = luachat.client{ base_url = "http://127.0.0.1:1/v1", api_key = %q, max_retries = 1 }
      local _, e3 = bad:chat{ model = "m", messages = {} }
      print(e3)
      local _, e4 = c:stream({ model = "m", messages = {} })
      print(e4)
      error(e1)
    ]], srv.base_url, KEY, KEY)
    local out = os.tmpname()
    local ok, _, code = os.execute(string.format("LUACHAT_LOG=debug %s -e %q >%s 2>&1", HOST, script, out))
    local f = io.open(out)
    local text = f:read("a")
    f:close()
    os.remove(out)
    srv:stop()
    assert.is_falsy(ok)
    assert.equal(1, code)
    assert.matches("luachat.Client", text, 1, true)
    assert.matches("invalid_api_key", text, 1, true)
    assert.matches("network error", text, 1, true)
    assert.matches("retry", text, 1, true)        -- the debug trace ran
    assert.matches("[REDACTED]", text, 1, true)
    assert.is_nil(text:find(KEY, 1, true), "the key leaked:\n" .. text)
  end)
end)
