-- luachat.stream: the old name of luachat.accumulate (the stream accumulator), kept so
-- scripts that require "luachat.stream" (docs/JSON.md once said so) keep working.
return require "luachat.accumulate"
