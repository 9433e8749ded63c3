#!/usr/bin/env bash
# Installs the Debian packages Hyper builds, tests and runs with. Idempotent:
# packages already present are not fetched again, so a warm machine pays
# nothing.
set -euo pipefail

packages=(
	ca-certificates
	e2fsprogs        # mke2fs, e2fsck, debugfs: writable disks and image checks
	xfsprogs         # mkfs.xfs: the reflink clone path in tests
	util-linux       # losetup, mount
	passwd           # useradd: the hyper system user and test users
	qemu-system-x86  # the QEMU driver: real guests on hosts without Firecracker
	busybox-static   # the small real image tests boot
	postgresql       # the cluster store engine, tested for real
	cpio
)
if [ "${1:-}" = "--bench" ]; then
	packages+=(debootstrap skopeo umoci)
fi

# The guest kernel is fetched with `apt-get download`, which needs package
# lists even when every package above is installed.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
	apt-get update -qq
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
