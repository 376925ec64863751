#!/bin/sh
# deps.sh: make sure the Debian packages luachat needs are installed.
# Silent when everything is present. As root, installs what is missing with
# apt-get (running `apt-get update` first only then); otherwise prints the
# exact command to run and exits 1.
# Usage: scripts/deps.sh [--bench]   (--bench adds what `make bench` needs)
# The base list is everything `make test` needs: the build, the test server
# (python3, curl), the TLS specs (openssl), the `-c` specs (tmux), the HTTP/2
# concurrency spec (nghttp2-server: nghttpd), the luv adapter spec (lua-luv), the
# HTTP/2 multiplexing spec (nghttp2-proxy: nghttpx);
# scripts/run-tests.sh fails when one is missing.
set -eu

packages="lua5.4 liblua5.4-dev libcurl4-openssl-dev lua-cjson lua-busted pkg-config \
make gcc libreadline-dev python3 curl openssl tmux nghttp2-server lua-luv nghttp2-proxy"
# node and npm: the reference MCP servers of the MCP specs (scripts/mcp-peers.sh) and make bench.
# node may come from elsewhere (nodesource bundles npm): ask for the commands, not the packages.
command -v node >/dev/null 2>&1 || packages="$packages nodejs"
command -v npm >/dev/null 2>&1 || packages="$packages npm"
if [ "${1:-}" = "--bench" ]; then
	packages="$packages time"
fi
if [ "${1:-}" = "--dev" ]; then
	packages="$packages clang valgrind luarocks"
fi

missing=""
for p in $packages; do
	# dpkg-query prints "install ok installed" only for fully installed packages.
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
	echo "deps.sh: installing:$missing" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >&2
	exit 0
fi
echo "deps.sh: missing Debian packages:$missing" >&2
echo "run:  sudo apt-get install -y$missing" >&2
exit 1
