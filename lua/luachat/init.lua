-- luachat: chat agents in Lua against any OpenAI-compatible API.
--
-- Owns: the public API table (`require "luachat"`), gathered from the
-- modules that implement it. Policy lives in those Lua modules; the C core
-- (luachat.core) supplies mechanisms only.
local core = require "luachat.core"
local sched = require "luachat.sched"
local client = require "luachat.client"

local M = {
  _VERSION = "luachat " .. core.version,
  version = core.version,
  json = require "luachat.json",

  client = client.new,

  spawn = sched.spawn,
  gather = sched.gather,
  semaphore = sched.semaphore,
  sleep = sched.sleep,
  step = sched.step,
  run = sched.run,
  now = core.now,

  error = core.error,
}

-- For applications with their own event loop: what to wait on, and for how long.
function M.fds() return core.fds() end
function M.fd() return core.fd() end -- the one descriptor to wait on (epoll), readable when step has work
function M.next_timeout() return sched.next_timeout() end
function M.live() return core.live() end
-- Drive luachat from a running libuv loop (luv): returns detach (lua/luachat/luv.lua).
function M.luv(uv, opts) return require("luachat.luv").attach(uv, opts) end

-- Loaded on first use, so scripts that only chat stay light: the agent layer,
-- stream accumulation (delta_text), and libcurl, which reading curl_version
-- loads (nil if it cannot be).
setmetatable(M, {
  __index = function(t, k)
    if k == "curl_version" then
      local v = core.curl_version
      rawset(t, k, v)
      return v
    elseif k == "delta_text" or k == "text_joiner" then
      local stream = require "luachat.accumulate"
      rawset(t, "delta_text", stream.delta_text)
      rawset(t, "text_joiner", stream.text_joiner) -- whole characters from deltas (docs/JSON.md)
      return rawget(t, k)
    elseif k == "batch" then -- luachat.batch.run{...}: docs/BATCH.md
      local batch = require "luachat.batch"
      rawset(t, k, batch)
      return batch
    elseif k == "agent" or k == "tool" then
      local agent = require "luachat.agent"
      rawset(t, "agent", agent)
      rawset(t, "tool", agent.tool)
      return rawget(t, k)
    elseif k == "mcp" then
      local mcp = require "luachat.mcp" -- Model Context Protocol sessions (docs/MCP.md)
      rawset(t, "mcp", mcp)
      return mcp
    elseif k == "mcp_tools" or k == "mcp_stdio" or k == "process" then
      -- luachat.mcp_tools.result_text, luachat.mcp_stdio.MAX_MESSAGE (docs/MCP.md), luachat.process.spawn
      local mod = require("luachat." .. k)
      rawset(t, k, mod)
      return mod
    end
    return nil
  end,
})

return M
