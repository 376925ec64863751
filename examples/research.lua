-- research.lua: a research fan-out. The lead agent has one tool, `research`,
-- whose handler runs a sub-agent; agents run the calls of a turn in parallel (the
-- default, parallel = true), so the sub-agents run at the same time, each its own
-- streamed conversation.
--   luachat examples/research.lua "Compare Lua, Python and Go for embedding"
local luachat = require "luachat"

local client = luachat.client()
local model = os.getenv("LUACHAT_MODEL") or "gpt-4o-mini"

local research = luachat.tool {
  name = "research",
  description = "Research one focused question and return a short factual answer",
  parameters = {
    type = "object",
    properties = { question = { type = "string" } },
    required = { "question" },
  },
  handler = function(args)
    local sub = luachat.agent {
      client = client, model = model, max_turns = 3,
      system = "Answer in at most three sentences. Be factual.",
    }
    local started = luachat.now()
    local result, err = sub:run(args.question)
    if not result then return nil, tostring(err) end
    io.stderr:write(string.format("  [sub-agent answered %q in %.2fs]\n", args.question, luachat.now() - started))
    return result.content
  end,
}

local lead = luachat.agent {
  client = client, model = model, parallel = true, stream = true, -- parallel: the default, said here
  system = "Split the user's request into independent questions, research them all at once "
    .. "with the research tool (one call per question, in one turn), then write a short synthesis.",
  tools = { research },
  on_text = function(text) io.write(text) io.stdout:flush() end,
  on_tool_call = function(call) io.stderr:write("  -> research ", call.arguments, "\n") return true end,
}

local request = arg[1] or "Compare Lua, Python and Go as languages to embed in a C application."
print("> " .. request)
local t0 = luachat.now()
local result, err = lead:run(request)
print()
if not result then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
print(string.format("[%d turns in %.2fs]", result.turns, luachat.now() - t0))
