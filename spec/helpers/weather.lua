-- spec/helpers/weather.lua: the get_weather tool the agent specs share.
-- Returns the tool (made with the given luachat.tool), the list of calls its
-- handler saw ({args=, call=} each), and a function that empties that list.
return function(make_tool)
  local calls = {}
  local tool = make_tool {
    name = "get_weather",
    description = "Current weather for a city",
    parameters = { type = "object", properties = { city = { type = "string" } }, required = { "city" },
      additionalProperties = false },
    handler = function(args, c)
      calls[#calls + 1] = { args = args, call = c }
      return { city = args.city, temp_c = 21 }
    end,
  }
  local function reset()
    for i = #calls, 1, -1 do calls[i] = nil end
  end
  return tool, calls, reset
end
