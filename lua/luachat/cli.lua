-- luachat.cli: the chat command line (`luachat -p PROMPT`, `luachat -c`).
--
-- Owns: the entry point: parse the options, print --help or a usage error,
-- set up, and hand over to the mode. The parts live beside it:
--   cli_options   options, --help text, exit statuses
--   cli_setup     config, provider (luachat.profiles), client, --tools, agent
--   cli_term      stdout/stderr, colour, spinner, tool-call lines, Ctrl-C pcall
--   cli_error     the one-line error message
--   cli_oneshot   -p: one answer (streamed, --no-stream, --json, --tools)
--   cli_chat      -c: the chat loop; cli_reader its input, cli_commands its /commands
-- Never: prints an API key, writes anything but the answer to stdout, or
-- calls os.exit (main returns the exit code; the host exits with it).
--
-- Called by the host (src/main.c) as require("luachat.cli").main(args), args
-- being argv without argv[0]. Returns 0 done, 1 error, 2 usage, 130 interrupted,
-- 141 stdout's reader left (`| head`: quiet, as cat and grep).
local options = require "luachat.cli_options"
local term = require "luachat.cli_term"
local cli_error = require "luachat.cli_error"
local setup = require "luachat.cli_setup"
local oneshot = require "luachat.cli_oneshot"
local chat = require "luachat.cli_chat"

local EXIT = options.EXIT

local M = {}

M.HELP = options.HELP
M.parse = options.parse
M.one_line = term.one_line
M.format_error = cli_error.format_error

-- main(args) -> exit code. args: argv without the program name.
function M.main(args)
  -- `luachat batch ...`: its own command line (luachat.batch_cli).
  if args and args[1] == "batch" then return require("luachat.batch_cli").main(args) end
  local o, uerr = options.parse(args or {})
  if not o then
    io.stderr:write("luachat: ", uerr, "\n", options.USAGE, "\n")
    return EXIT.usage
  end
  if o.help then
    io.stdout:write(options.HELP)
    return EXIT.ok
  end
  local ctx, code = setup.setup(o)
  if not ctx then return code end
  local rc
  if o.chat then rc = chat.run(ctx) else rc = oneshot.run(ctx) end
  setup.close_mcp(ctx) -- --mcp servers: asked to exit, then ended
  return rc
end

-- For tests.
M.keep_partial = chat.keep_partial

return M
