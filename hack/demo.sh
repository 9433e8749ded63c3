#!/usr/bin/env bash
# Runs a Hyper node on this machine the way an operator would: hyperd as the
# unprivileged `hyper` user, configured by a root-owned /etc/hyper/config.toml,
# then shows what it can do. `hack/demo.sh stop` stops it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

CONFIG=/etc/hyper/config.toml
USER_NAME=hyper
RUN_DIR=/run/hyper
PIDFILE=$RUN_DIR/hyperd.pid
LOG=/var/log/hyper/hyperd.log

stop() {
	if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
		pid=$(cat "$PIDFILE")
		kill "$pid"
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		echo "stopped hyperd ($pid)"
	fi
	rm -f "$PIDFILE"
}

if [ "${1:-}" = stop ]; then
	stop
	exit 0
fi

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates a system user and /etc/hyper)"; exit 1; }

id -u "$USER_NAME" >/dev/null 2>&1 ||
	useradd --system --home-dir /srv/hyper --no-create-home --shell /usr/sbin/nologin "$USER_NAME"

if [ ! -e "$CONFIG" ]; then
	install -d -m 0755 /etc/hyper
	cat >"$CONFIG" <<'TOML'
# Hyper node configuration; see README.md "Configuration".
work_dir = "/srv/hyper"

[jails]
uid_gid_range = [900000, 999999]
cgroup = "hyper"

[vmm]
driver = "auto"
TOML
	chmod 0644 "$CONFIG"
	echo "wrote $CONFIG"
fi
chown root:root "$CONFIG"

work_dir=$(sed -n 's/^work_dir *= *"\(.*\)"/\1/p' "$CONFIG")
work_dir=${work_dir:-/srv/hyper}
# work_dir is root-owned and sticky: hyperd (group hyper) creates its files
# and directories in it, but cannot rename or remove what root put there (the
# jails), so it can never redirect the jailer, which runs as root.
install -d -o root -g "$USER_NAME" -m 01770 "$work_dir"
chown root:"$USER_NAME" "$work_dir"
chmod 01770 "$work_dir"
install -d -o "$USER_NAME" -g "$USER_NAME" -m 0755 "$RUN_DIR" /var/log/hyper

stop
cd /
runuser -u "$USER_NAME" -- /usr/local/bin/hyperd --config "$CONFIG" >>"$LOG" 2>&1 &
echo $! >"$PIDFILE"
socket="$work_dir/hyperd.sock"
echo "starting hyperd (the first start fetches and verifies the guest kernel; log: $LOG)"
for _ in $(seq 3000); do
	[ -S "$socket" ] && grep -q "hyperd ready" "$LOG" && break
	kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { echo "hyperd exited; last log lines:"; tail -n 20 "$LOG"; exit 1; }
	sleep 0.1
done
[ -S "$socket" ] || { echo "hyperd did not open $socket; see $LOG"; exit 1; }
echo "hyperd is running as $USER_NAME (pid $(cat "$PIDFILE")), API on unix://$socket"
echo

run() {
	echo "\$ $*"
	"$@"
}

run hyper node ls
echo

# A small real image, built from Debian's busybox-static.
image_tar=/var/lib/hyper-demo/busybox.tar
install -d -m 0755 /var/lib/hyper-demo
[ -f "$image_tar" ] || "$here/busybox-image.sh" "$image_tar"
echo "\$ hyper image load docker-archive:$image_tar"
image=$(hyper image load -q "docker-archive:$image_tar")
echo "$image"
echo
echo "\$ hyper vm create --image ${image:0:12}... --type micro"
vm=$(hyper vm create -q --image "$image" --type micro)
echo "$vm"
echo
run hyper vm exec "$vm" -- uname -a
run hyper vm exec "$vm" -- cat /etc/os-release
echo
run hyper vm ls
run hyper vm stop "$vm"
echo
echo "hyperd keeps running; stop it with: make demo-stop"
