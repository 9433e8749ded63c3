# Benchmarks of internal/disk (root: loop devices, mount, drop_caches).
# BENCH_DISK_FLAGS passes flags through, e.g. BENCH_DISK_FLAGS="-n 9 -drop-caches=false".
BENCH_DISK_FLAGS ?=

.PHONY: bench-fork bench-disk

# Clone latency of writable disks: reflink on XFS, sparse copy on ext4, each
# against cp --sparse=always.
bench-fork:
	$(GO) run ./internal/disk/internal/bench $(BENCH_DISK_FLAGS) fork

# Making a writable disk: mke2fs against a clone of the cached template.
bench-disk:
	$(GO) run ./internal/disk/internal/bench $(BENCH_DISK_FLAGS) create
