#!/usr/bin/env bash
# The local base image the Dockerfiles build FROM where their pinned upstream bases cannot be pulled (no route to
# Docker Hub, only Debian's mirrors and PyPI): Debian bookworm's minbase with its python3 (3.11) and venv, useradd
# (passwd) and the CA bundle, bootstrapped by mmdebstrap and imported into the engine. Docs, man pages and
# translations are left out (dpkg path-exclude), and /usr is merged by mmdebstrap's own hook rather than the
# usrmerge package, which would pull in 50 MB of perl.
#   deploy/base-image.sh ENGINE IMAGE        (ENGINE: podman or docker; IMAGE: e.g. localhost/vaeserve-base:bookworm)
# Does nothing when IMAGE already exists: delete it (ENGINE rmi IMAGE) to take Debian's latest security updates.
set -euo pipefail
engine=${1:?usage: deploy/base-image.sh ENGINE IMAGE}
image=${2:?usage: deploy/base-image.sh ENGINE IMAGE}
if "$engine" image inspect "$image" >/dev/null 2>&1; then
	echo "base image $image exists"
	exit 0
fi
command -v mmdebstrap >/dev/null || { echo "base-image: needs mmdebstrap (make system-deps installs it)" >&2; exit 1; }
tar=$(mktemp --suffix=.tar)
trap 'rm -f "$tar"' EXIT
mirror=http://deb.debian.org/debian
mmdebstrap --variant=minbase --include=python3,python3-venv,python-is-python3,passwd,ca-certificates \
	--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' --aptopt='Acquire::Languages "none"' \
	--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
	bookworm "$tar" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
	"deb http://deb.debian.org/debian-security bookworm-security main"
# LANG as in the python images: UTF-8 for text files and the terminal whatever the host's locale.
"$engine" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tar" "$image"
