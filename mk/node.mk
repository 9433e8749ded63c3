# The node's VM manager (internal/node).
#
#   make bench-create   orchestration overhead of CreateVm: the real manager,
#                       store, setuid helper (root), disks and initrd with a
#                       VMM that is ready at once; 200 sequential and 50
#                       concurrent creates, then stops, with p50/p99,
#                       creates per second, where the time goes, and
#                       hyperd's memory per running VM. Set
#                       HYPER_TEST_POSTGRES_URL to also run it on PostgreSQL,
#                       and TMPDIR to a directory on XFS to measure reflinked
#                       disks and initrds (on ext4 they are copied).
#
# BENCH_CREATE_FLAGS passes flags through, e.g. BENCH_CREATE_FLAGS=-benchtime=3x
# for three batches per sub-benchmark.
BENCH_CREATE_FLAGS ?= -benchtime=1x

.PHONY: bench-create

bench-create:
	$(GO) test -run '^$$' -bench '^BenchmarkCreateVM$$' -timeout 20m -v $(BENCH_CREATE_FLAGS) ./internal/node
