-- Inputs that once crashed a fuzzer (spec/fixtures/fuzz/), replayed through
-- the same checks as spec/c/fuzz_accumulate.c: SSE events -> JSON -> the
-- accumulator, with its invariants (spec/fuzz/accumulate.lua).
local proc = require "spec.helpers.proc"
local check = dofile("spec/fuzz/accumulate.lua")

-- The data of each SSE event (LF line ends, enough for these inputs).
local function events_of(text)
  local out = {}
  for block in (text .. "\n\n"):gmatch("(.-)\n\n") do
    local data = {}
    for line in (block .. "\n"):gmatch("(.-)\n") do
      local d = line:match("^data: ?(.*)$")
      if d then data[#data + 1] = d end
    end
    if #data > 0 then out[#out + 1] = table.concat(data, "\n") end
  end
  return out
end

describe("fuzz regressions", function()
  local p = io.popen("ls spec/fixtures/fuzz/ 2>/dev/null")
  local names = {}
  for name in p:lines() do names[#names + 1] = name end
  p:close()

  it("the corpus of past crashes is there", function()
    assert.is_true(#names >= 1)
  end)

  for _, name in ipairs(names) do
    it(name .. " keeps every invariant", function()
      local events = events_of(assert(proc.read_file("spec/fixtures/fuzz/" .. name)))
      assert.is_true(#events > 0)
      assert.is_true(pcall(check, events), select(2, pcall(check, events)))
    end)
  end
end)
