-- luachat.cassette_options: the client options of record/replay (cassette,
-- cassette_mode, cassette_timing), their rules and environment variables.
--
-- Owns: what luachat.client checks when it is made, so that the client loads
-- luachat.cassette (600 lines to compile at every start) only when a cassette
-- is asked for (the cassette option or LUACHAT_CASSETTE).
-- Never: opens a cassette (luachat.cassette does).
local options = require "luachat.options"

local M = {}

M.MODES = { record = true, replay = true, auto = true }
M.TIMINGS = { instant = true, recorded = true }

-- The client options (luachat.options rules) and their environment variables.
M.OPTIONS = {
  cassette = options.either(options.text, options.rule("false", function(v) return v == false end),
    "a path (or false for none)"),
  cassette_mode = options.enum("record, replay or auto", M.MODES),
  cassette_timing = options.enum("instant or recorded", M.TIMINGS),
}
M.ENV = { cassette = "LUACHAT_CASSETTE", cassette_mode = "LUACHAT_CASSETTE_MODE",
  cassette_timing = "LUACHAT_CASSETTE_TIMING" }

-- Does a client made with opts use a cassette (luachat.cassette.for_client decides how)?
function M.wanted(opts)
  if opts.cassette == false then return false end
  return opts.cassette ~= nil or os.getenv(M.ENV.cassette) ~= nil
end

return M
