#!/usr/bin/env bash
# Starts (or stops) a throwaway PostgreSQL server for Hyper's tests, built from
# Debian's `postgresql` package.
#
#   hack/postgres.sh [DIR]        start (idempotent); DIR defaults to /tmp/hyper-pg
#   hack/postgres.sh start [DIR]  same
#   hack/postgres.sh stop [DIR]   stop it (ok if it is not running)
#
# The server listens on 127.0.0.1:${HYPER_PG_PORT:-55432} only, trusts every
# local and loopback connection, keeps its data in DIR (owned by the postgres
# OS user when run as root) and has no unix socket, so it can neither collide
# with nor disturb a cluster that Debian's package may have created on 5432.
# On start the last line printed is the URL to connect with.
set -euo pipefail

die() {
	echo "postgres.sh: $*" >&2
	exit 1
}

cmd=start
case "${1:-}" in
start | stop)
	cmd=$1
	shift
	;;
esac
dir=${1:-/tmp/hyper-pg}
port=${HYPER_PG_PORT:-55432}

[[ $dir == /* ]] || die "data directory must be an absolute path, got '$dir'"
[[ $port =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "HYPER_PG_PORT must be a TCP port number, got '$port'"

# Debian installs each major version under /usr/lib/postgresql/<major>/bin;
# take the newest one present.
bindir=
for d in /usr/lib/postgresql/*/bin; do
	[[ -x $d/initdb && -x $d/pg_ctl ]] || continue
	if [[ -z $bindir ]] || (($(basename "$(dirname "$d")") > $(basename "$(dirname "$bindir")"))); then
		bindir=$d
	fi
done
[[ -n $bindir ]] || die "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; install them with: apt-get install -y postgresql"

# PostgreSQL refuses to run as root: as root, run its tools as the postgres
# user; as anyone else, run them as that user (who then owns DIR).
as_pg() {
	if ((EUID == 0)); then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

running() {
	[[ -f $dir/PG_VERSION ]] && as_pg "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1
}

if [[ $cmd == stop ]]; then
	if running; then
		as_pg "$bindir/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
		echo "stopped PostgreSQL in $dir"
	else
		echo "PostgreSQL in $dir is not running"
	fi
	exit 0
fi

if ! running; then
	if [[ ! -f $dir/PG_VERSION ]]; then
		if [[ -e $dir && -n $(ls -A "$dir" 2>/dev/null) ]]; then
			die "$dir exists, is not empty and is not a PostgreSQL data directory"
		fi
		mkdir -p "$dir"
		if ((EUID == 0)); then
			id -u postgres >/dev/null 2>&1 || die "no 'postgres' OS user; install Debian's postgresql package"
			chown postgres:postgres "$dir"
			as_pg test -w "$dir" || die "the postgres user cannot write to $dir (is a parent directory closed to it?)"
		fi
		chmod 0700 "$dir"
		as_pg "$bindir/initdb" -D "$dir" --username=postgres --auth=trust \
			--encoding=UTF8 --locale=C >"$dir.initdb.log" 2>&1 ||
			die "initdb failed; see $dir.initdb.log"
		rm -f "$dir.initdb.log"
		# A disposable test server: durability buys nothing and costs time.
		cat >>"$dir/postgresql.conf" <<-'EOF'

			# hack/postgres.sh: a throwaway server for tests.
			listen_addresses = '127.0.0.1'
			unix_socket_directories = ''
			fsync = off
			synchronous_commit = off
			full_page_writes = off
			max_connections = 200
		EOF
	fi
	# The port comes from the environment on every start, so one data
	# directory can be moved to another port by restarting it.
	if ! as_pg "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 -o "-p $port" start >/dev/null; then
		tail -n 20 "$dir/server.log" >&2 || true
		die "PostgreSQL did not start (log: $dir/server.log)"
	fi
fi

# Report the port the running server really uses (line 4 of postmaster.pid),
# which differs from $port if it was already running on another one.
actual=$(sed -n 4p "$dir/postmaster.pid")
[[ $actual =~ ^[0-9]+$ ]] || die "cannot read the port from $dir/postmaster.pid"
echo "PostgreSQL $(basename "$(dirname "$bindir")") running in $dir"
echo "postgres://postgres@127.0.0.1:$actual/postgres?sslmode=disable"
