-- examples/cassette/weather_agent_spec.lua: an agent with tools tested offline,
-- fast and deterministically, against a recorded cassette (docs/CASSETTES.md).
--
--   busted --lua=luachat examples/cassette/weather_agent_spec.lua
--
-- Replay needs no network and no API key. To record the cassette again against
-- a real provider: LUACHAT_CASSETTE_MODE=record OPENAI_API_KEY=sk-... busted ...
local luachat = require "luachat"

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local weather_agent = require "weather_agent"

describe("the weather agent", function()
  local client

  before_each(function()
    client = luachat.client {
      cassette = here .. "weather.jsonl",
      cassette_mode = os.getenv("LUACHAT_CASSETTE_MODE") or "replay",
    }
  end)

  it("asks the tool about both cities and compares them", function()
    local calls = {}
    local result, err = weather_agent.new(client, calls):run("Is it warmer in Paris or in Oslo?")
    assert.is_nil(err)
    assert.same({ "Paris", "Oslo" }, calls)        -- the handlers really ran
    assert.equal(2, result.turns)                   -- one turn with tool calls, one answer
    assert.equal("Paris is warmer: 21 °C against 12 °C in Oslo.", result.content)
    -- the tool results went back to the model as recorded
    assert.equal('{"city":"Paris","temp_c":21}', result.messages[4].content)
  end)

  it("fails with err.kind 'cassette' for a conversation that was never recorded", function()
    local result, err = weather_agent.new(client):run("And in Rome?")
    assert.is_nil(result)
    assert.equal("cassette", err.kind)
    assert.matches('recorded "Is it warmer in Paris or in Oslo?", sent "And in Rome?"', err.message, 1, true)
  end)
end)
