-- luachat-scm-1.rockspec: the luachat Lua library (luachat.core in C, the
-- rest in Lua) for any Lua 5.4, built by luarocks' builtin backend
-- against the system libcurl's headers (libcurl.so.4 itself is loaded with
-- dlopen on the first request, src/curl_dl.c, so it is not linked):
--   luarocks --lua-version=5.4 make luachat-scm-1.rockspec
-- (the host binary, libluachat and the man page come from `make install`).
rockspec_format = "3.0"
package = "luachat"
version = "scm-1"

source = {
  url = "git+https://github.com/luachat/luachat.git",
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
      sources = {
        "src/buf.c", "src/sse.c", "src/chunk_scan.c", "src/http.c", "src/curl_dl.c",
        "src/lchat_core.c", "src/lchat_transfer.c", "src/lchat_chunks.c", "src/lchat_err.c",
        "src/lchat_json.c",
      },
      defines = { "_POSIX_C_SOURCE=200809L" },
      incdirs = { "src", "include", "$(CURL_INCDIR)" },
      libraries = { "m" },
    },
    ["luachat"] = "lua/luachat/init.lua",
    ["luachat.agent"] = "lua/luachat/agent.lua",
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
    ["luachat.log"] = "lua/luachat/log.lua",
    ["luachat.profiles"] = "lua/luachat/profiles.lua",
    ["luachat.redact"] = "lua/luachat/redact.lua",
    ["luachat.sched"] = "lua/luachat/sched.lua",
    ["luachat.schema"] = "lua/luachat/schema.lua",
    ["luachat.stream"] = "lua/luachat/stream.lua",
  },
  copy_directories = { "docs", "examples" },
}
