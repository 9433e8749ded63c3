# The metadata store (internal/store) runs its conformance suite against SQLite
# and against a real PostgreSQL. postgres-up starts a throwaway server from
# Debian's postgresql package (hack/postgres.sh); test-store runs the suite on
# both engines against it.
HYPER_PG_DIR ?= /tmp/hyper-pg

.PHONY: postgres-install postgres-up postgres-down test-store

# Debian's package may also create and start its own cluster on 5432; ours
# uses its own directory and port and leaves that one alone.
postgres-install:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)

postgres-up: postgres-install
	@hack/postgres.sh start $(HYPER_PG_DIR)

postgres-down:
	@hack/postgres.sh stop $(HYPER_PG_DIR)

test-store: postgres-install
	HYPER_TEST_POSTGRES_URL="$$(hack/postgres.sh start $(HYPER_PG_DIR) | tail -n 1)" \
		$(GO) test -count=1 ./internal/store/...
