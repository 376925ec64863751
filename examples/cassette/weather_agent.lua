-- examples/cassette/weather_agent.lua: a small agent with one tool, the code
-- under test in weather_agent_spec.lua (which runs it against a cassette).
local luachat = require "luachat"

local M = {}

-- A stand-in for a real weather service.
M.TEMPERATURES = { Paris = 21, Oslo = 12 }

-- new(client, calls) -> an agent; every city the tool is asked about is appended to calls.
function M.new(client, calls)
  local weather = luachat.tool {
    name = "get_weather",
    description = "The current temperature in a city, in degrees Celsius",
    parameters = { type = "object", properties = { city = { type = "string" } }, required = { "city" },
      additionalProperties = false },
    handler = function(args)
      if calls then calls[#calls + 1] = args.city end
      local t = M.TEMPERATURES[args.city]
      if not t then return nil, "unknown city " .. args.city end
      return { city = args.city, temp_c = t }
    end,
  }
  return luachat.agent { client = client, model = "gpt-4o-mini", tools = { weather },
    system = "Answer in one sentence." }
end

return M
