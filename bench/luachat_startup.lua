-- bench/luachat_startup.lua: the start-up workload of `make bench`: load the
-- library, make a client (no request), exit. Run by ./luachat.
-- Never: touches the network.
local luachat = require "luachat"
local client = luachat.client { base_url = arg[1] or "http://127.0.0.1:9/v1", api_key = "sk-bench" }
assert(client)
print('{"ok":true}')
