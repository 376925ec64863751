-- calculator.lua: an agent with a calculator and a unit converter.
--   luachat examples/calculator.lua "What is 23 * 19, and 100 km in miles?"
-- Uses OPENAI_BASE_URL / OPENAI_API_KEY; LUACHAT_MODEL picks the model.
local luachat = require "luachat"

-- Arithmetic on numbers only: the expression is checked before it is evaluated.
local function evaluate(expr)
  if not expr:match("^[%d%s%.%+%-%*/%%%^%(%)eE]+$") then
    return nil, "only numbers, spaces and + - * / % ^ ( ) are allowed"
  end
  local fn = load("return " .. expr, "expression", "t", {})
  if not fn then return nil, "not a valid expression: " .. expr end
  local ok, value = pcall(fn)
  local why = not ok and tostring(value) or ""
  if why:find("divide by zero", 1, true) or why:find("'n%0'", 1, true) then -- Lua's words for 1//0 and 1%0
    return nil, "division by zero in " .. expr
  end
  if not ok or type(value) ~= "number" then return nil, "cannot evaluate: " .. expr end
  -- 1/0 is inf and 0/0 nan in Lua, which JSON cannot carry: say what went wrong instead.
  if value ~= value or value == math.huge or value == -math.huge then
    return nil, "division by zero (or a result too large for a number) in " .. expr
  end
  return value
end

local calculator = luachat.tool {
  name = "calculate",
  description = "Evaluate an arithmetic expression, e.g. (2 + 3) * 4 / 5",
  parameters = {
    type = "object",
    properties = { expression = { type = "string", description = "the expression" } },
    required = { "expression" },
    additionalProperties = false,
  },
  handler = function(args)
    local value, err = evaluate(args.expression)
    if value == nil then return nil, err end
    return { expression = args.expression, value = value }
  end,
}

local FACTORS = { -- to SI base units
  m = 1, km = 1000, cm = 0.01, mm = 0.001, mi = 1609.344, miles = 1609.344, ft = 0.3048, inch = 0.0254,
  kg = 1, g = 0.001, lb = 0.45359237, oz = 0.028349523125,
  l = 1, ml = 0.001, gal = 3.785411784,
}

local convert = luachat.tool {
  name = "convert_units",
  description = "Convert a quantity between units of length, mass, volume or temperature (c, f, k)",
  parameters = {
    type = "object",
    properties = {
      value = { type = "number" },
      from = { type = "string", enum = { "m", "km", "cm", "mm", "mi", "miles", "ft", "inch", "kg", "g", "lb", "oz", "l", "ml", "gal", "c", "f", "k" } },
      to = { type = "string", enum = { "m", "km", "cm", "mm", "mi", "miles", "ft", "inch", "kg", "g", "lb", "oz", "l", "ml", "gal", "c", "f", "k" } },
    },
    required = { "value", "from", "to" },
  },
  handler = function(args)
    local v, from, to = args.value, args.from, args.to
    local temps = { c = true, f = true, k = true }
    if temps[from] or temps[to] then
      if not (temps[from] and temps[to]) then return nil, "cannot convert between temperature and " .. (temps[from] and to or from) end
      local c = from == "c" and v or from == "f" and (v - 32) * 5 / 9 or v - 273.15
      local out = to == "c" and c or to == "f" and c * 9 / 5 + 32 or c + 273.15
      return { value = v, from = from, to = to, result = math.floor(out * 1000 + 0.5) / 1000 }
    end
    local out = v * FACTORS[from] / FACTORS[to]
    return { value = v, from = from, to = to, result = math.floor(out * 1000 + 0.5) / 1000 }
  end,
}

local mid_line = false -- the streamed text has not ended its line yet

local agent = luachat.agent {
  client = luachat.client(),
  model = os.getenv("LUACHAT_MODEL") or "gpt-4o-mini",
  system = "You are a precise assistant. Use the tools for every calculation and conversion.",
  tools = { calculator, convert },
  stream = true,
  on_text = function(text)
    io.write(text)
    io.stdout:flush()
    mid_line = text:sub(-1) ~= "\n"
  end,
  on_tool_call = function(call)
    if mid_line then io.write("\n") io.stdout:flush() mid_line = false end
    io.stderr:write(string.format("  -> %s %s\n", call.name, call.arguments))
    return true
  end,
  on_tool_result = function(_, result, err)
    io.stderr:write(string.format("  <- %s\n", err and ("error: " .. err) or result))
  end,
}

local question = arg[1] or "What is 23 * 19, and how many miles are 100 km?"
print("> " .. question)
local result, err = agent:run(question)
print()
if not result then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
print(string.format("[%d turns, %s tokens]", result.turns, result.usage.total_tokens or "?"))
