-- luachat-scm-1.rockspec: the luachat Lua library (luachat.core in C, the
-- rest in Lua) for any Lua 5.4, built by luarocks' builtin backend
-- against the system libcurl's headers (libcurl.so.4 itself is loaded with
-- dlopen on the first request, src/curl_dl.c, so it is not linked):
--   luarocks --lua-version=5.4 make luachat-scm-1.rockspec
-- (the host binary, libluachat and the man page come from `make install`).
rockspec_format = "3.0"
package = "luachat"
version = "scm-1"

-- This repository has no public URL (yet): the url below is a local
-- placeholder, not an address to fetch from. `luarocks make` (above) builds
-- the checkout it runs in and never reads it; for `luarocks build` or
-- `luarocks pack`, point it at your clone (git+file:///home/you/luachat) or
-- at the public repository once there is one.
source = {
  url = "git+file:///path/to/luachat",
}

description = {
  summary = "Chat agents in Lua against any OpenAI-compatible API",
  detailed = [[
Blocking and streamed chat completions, many requests at once in coroutine
tasks, and a tool-calling loop, over libcurl's multi interface. Streams are
parsed in C (WHATWG SSE rules); errors are structured tables. For
applications with their own event loop: luachat.step, luachat.fds and
luachat.next_timeout.
]],
  license = "MIT",
  labels = { "llm", "openai", "http", "sse", "curl" },
}

dependencies = {
  "lua >= 5.4, < 5.5",
}

-- Only the library is checked: Debian's multiarch curl.h
-- (/usr/include/<triplet>/curl) is where the compiler looks anyway, but
-- luarocks' header search would not find it. Checked, not linked.
external_dependencies = {
  CURL = { library = "curl" },
}

build = {
  type = "builtin",
  modules = {
    ["luachat.core"] = {
      -- the Makefile's ENGINE_OBJ: BASE_SRC, HTTP_SRC, BIND_SRC (spec/batch_rockspec_spec.lua checks)
      sources = {
        "src/buf.c", "src/sse.c", "src/chunk_scan.c", "src/proc.c",
        "src/http.c", "src/curl_dl.c",
        "src/lchat_core.c", "src/lchat_transfer.c", "src/lchat_chunks.c", "src/lchat_err.c",
        "src/lchat_json.c", "src/lchat_proc.c",
      },
      defines = { "_POSIX_C_SOURCE=200809L" },
      incdirs = { "src", "include", "$(CURL_INCDIR)" },
      libraries = { "m" },
    },
    ["luachat"] = "lua/luachat/init.lua",
    ["luachat.accumulate"] = "lua/luachat/accumulate.lua",
    ["luachat.agent"] = "lua/luachat/agent.lua",
    ["luachat.batch"] = "lua/luachat/batch.lua",
    ["luachat.batch_cli"] = "lua/luachat/batch_cli.lua",
    ["luachat.batch_idset"] = "lua/luachat/batch_idset.lua",
    ["luachat.batch_remote"] = "lua/luachat/batch_remote.lua",
    ["luachat.cassette"] = "lua/luachat/cassette.lua",
    ["luachat.cassette_options"] = "lua/luachat/cassette_options.lua",
    ["luachat.chat_stream"] = "lua/luachat/chat_stream.lua",
    ["luachat.cli"] = "lua/luachat/cli.lua",
    ["luachat.cli_chat"] = "lua/luachat/cli_chat.lua",
    ["luachat.cli_commands"] = "lua/luachat/cli_commands.lua",
    ["luachat.cli_error"] = "lua/luachat/cli_error.lua",
    ["luachat.cli_oneshot"] = "lua/luachat/cli_oneshot.lua",
    ["luachat.cli_options"] = "lua/luachat/cli_options.lua",
    ["luachat.cli_reader"] = "lua/luachat/cli_reader.lua",
    ["luachat.cli_setup"] = "lua/luachat/cli_setup.lua",
    ["luachat.cli_term"] = "lua/luachat/cli_term.lua",
    ["luachat.client"] = "lua/luachat/client.lua",
    ["luachat.json"] = "lua/luachat/json.lua",
    ["luachat.limits"] = "lua/luachat/limits.lua",
    ["luachat.log"] = "lua/luachat/log.lua",
    ["luachat.luv"] = "lua/luachat/luv.lua",
    ["luachat.mcp"] = "lua/luachat/mcp.lua",
    ["luachat.mcp_http"] = "lua/luachat/mcp_http.lua",
    ["luachat.mcp_rpc"] = "lua/luachat/mcp_rpc.lua",
    ["luachat.mcp_stdio"] = "lua/luachat/mcp_stdio.lua",
    ["luachat.mcp_tools"] = "lua/luachat/mcp_tools.lua",
    ["luachat.options"] = "lua/luachat/options.lua",
    ["luachat.process"] = "lua/luachat/process.lua",
    ["luachat.profiles"] = "lua/luachat/profiles.lua",
    ["luachat.redact"] = "lua/luachat/redact.lua",
    ["luachat.request"] = "lua/luachat/request.lua",
    ["luachat.sched"] = "lua/luachat/sched.lua",
    ["luachat.schema"] = "lua/luachat/schema.lua",
    ["luachat.stream"] = "lua/luachat/stream.lua",
    ["luachat.structured"] = "lua/luachat/structured.lua",
    ["luachat.util"] = "lua/luachat/util.lua",
  },
  copy_directories = { "docs", "examples" },
}
