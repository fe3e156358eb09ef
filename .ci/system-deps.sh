#!/usr/bin/env bash
# Installs the Debian tools that tests drive for real: prometheus + promtool (metrics), kubectl and openssl (deploy),
# chromium and its chromedriver (the explorer page in a headless browser, tests/client/explore), and podman with runc,
# catatonit (pods) and mmdebstrap (the local base image) for the images and pods of tests/deploy.
# Best effort: where apt-get cannot run, the tests that need a tool skip and say why.
set -u
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v kubectl >/dev/null 2>&1 || need+=(kubectl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/bin/catatonit ] || [ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
		echo "system-deps: cannot install ${need[*]} (needs root and apt-get); tests that need them will skip" >&2
		exit 0
	fi
	echo "system-deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
		|| echo "system-deps: apt-get install ${need[*]} failed; tests that need them will skip" >&2
fi
# podman's defaults fail on these machines: crun refuses cgroups v1 in hybrid mode ("cgroups in hybrid mode not
# supported"), and its default ulimits are above the hard limits a container here may have. A drop-in of our own
# (written once: an edited copy stands) picks runc and limits within them.
conf=/etc/containers/containers.conf.d/50-vaeserve.conf
if command -v podman >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && [ ! -e "$conf" ]; then
	mkdir -p "$(dirname "$conf")"
	cat >"$conf" <<'CONF'
# Written by vaeserve's .ci/system-deps.sh: runc (crun refuses hybrid cgroups) and ulimits within the hard limits.
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
fi
exit 0
