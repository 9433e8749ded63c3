#!/usr/bin/env bash
# Builds a small real OCI image, as a docker-archive tar, from Debian's
# busybox-static: what `make demo` loads and boots. Usage:
#   hack/busybox-image.sh OUT.tar
set -euo pipefail
out=${1:?usage: $0 OUT.tar}
[ -x /bin/busybox ] || { echo "needs /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev,run,var}
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
	[ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
cat >"$root/etc/os-release" <<'OS'
NAME="Hyper busybox"
ID=busybox
PRETTY_NAME="Hyper demo image (busybox)"
OS
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

arch=$(dpkg --print-architecture)
(cd "$root" && tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -cf "$work/layer.tar" .)
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
cat >"$work/config.json" <<JSON
{"architecture":"$arch","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh","-c","echo hello from busybox"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
JSON
cat >"$work/manifest.json" <<JSON
[{"Config":"config.json","RepoTags":["hyper-demo/busybox:latest"],"Layers":["layer.tar"]}]
JSON
tar -C "$work" -cf "$out.tmp" manifest.json config.json layer.tar
mv "$out.tmp" "$out"
chmod 0644 "$out"
