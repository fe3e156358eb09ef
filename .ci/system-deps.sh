#!/usr/bin/env bash
# Installs the Debian tools that tests drive for real: prometheus + promtool (metrics), kubectl and openssl (deploy),
# chromium and its chromedriver (the explorer page in a headless browser, tests/client/explore).
# Best effort: where apt-get cannot run, the tests that need a tool skip and say why.
set -u
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v kubectl >/dev/null 2>&1 || need+=(kubectl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "system-deps: cannot install ${need[*]} (needs root and apt-get); tests that need them will skip" >&2
	exit 0
fi
echo "system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
	|| echo "system-deps: apt-get install ${need[*]} failed; tests that need them will skip" >&2
exit 0
