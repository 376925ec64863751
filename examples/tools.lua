-- tools.lua: tools for the command line: luachat -c --tools examples/tools.lua
-- A --tools file returns a list of luachat.tool{...}.
local luachat = require "luachat"

return {
  luachat.tool {
    name = "current_time",
    description = "The current date and time (UTC), ISO 8601",
    handler = function() return os.date("!%Y-%m-%dT%H:%M:%SZ") end,
  },
  luachat.tool {
    name = "word_count",
    description = "Count the words and characters of a text",
    parameters = { type = "object", properties = { text = { type = "string" } }, required = { "text" } },
    handler = function(args)
      local words = 0
      for _ in args.text:gmatch("%S+") do words = words + 1 end
      return { words = words, characters = utf8.len(args.text) or #args.text }
    end,
  },
}
