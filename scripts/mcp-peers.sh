#!/bin/sh
# mcp-peers.sh: install the reference MCP servers the MCP specs talk to
# (@modelcontextprotocol/server-everything and server-filesystem), pinned in
# spec/mcp/package.json and spec/mcp/package-lock.json, into spec/mcp/node_modules
# (git-ignored). `make test` and `make asan` run it before the specs; spec/mcp_spec.lua
# runs it too, so the file passes alone.
# Cached: `npm ci` runs only when an installed version differs from the lockfile's.
# Never a silent skip: no node/npm, or an install that fails, exits 1 with the reason.
set -eu
cd "$(dirname "$0")/../spec/mcp"

for cmd in node npm; do
	if ! command -v "$cmd" >/dev/null 2>&1; then
		echo "mcp-peers.sh: $cmd is not installed (scripts/deps.sh installs nodejs and npm); the MCP specs need it" >&2
		exit 1
	fi
done

# "ok" when every package the lockfile pins is installed at that version, else what differs.
check() {
	node -e '
const fs = require("fs");
const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8")).packages;
const bad = [];
for (const [path, p] of Object.entries(lock)) {
  if (!path.startsWith("node_modules/") || p.optional) continue;
  let have = "missing";
  try { have = JSON.parse(fs.readFileSync(path + "/package.json", "utf8")).version; } catch (e) {}
  if (have !== p.version) bad.push(path.slice(13) + " " + have + " (lockfile: " + p.version + ")");
}
console.log(bad.length ? bad.slice(0, 3).join(", ") + (bad.length > 3 ? ", ..." : "") : "ok");
'
}

state=$(check)
[ "$state" = ok ] && exit 0
echo "mcp-peers.sh: npm ci in spec/mcp ($state)" >&2
if ! npm ci --prefer-offline --no-audit --no-fund --loglevel=error >&2; then
	echo "mcp-peers.sh: npm ci failed in spec/mcp: the MCP specs cannot run (is the npm registry reachable?)" >&2
	exit 1
fi
state=$(check)
if [ "$state" != ok ]; then
	echo "mcp-peers.sh: after npm ci, spec/mcp/node_modules still differs from the lockfile: $state" >&2
	exit 1
fi
