# Image loading (internal/image).

BENCH_IMAGE_CACHE ?= /var/cache/hyper-bench
BENCH_IMAGE_RUNS ?= 5

.PHONY: bench-image test-image
# Loads a Debian minbase image (debootstrapped once into $(BENCH_IMAGE_CACHE))
# with Hyper and with the reference pipeline (skopeo, umoci, mke2fs -d), and
# prints the medians, the ratios and the time of a plain copy. Needs root
# the first time (debootstrap) and network to the apt mirror.
bench-image:
	@for tool in debootstrap skopeo umoci mke2fs; do \
		command -v $$tool >/dev/null || { apt-get install -y debootstrap skopeo umoci e2fsprogs && break; }; \
	done
	CGO_ENABLED=0 $(GO) run ./internal/image/bench -cache $(BENCH_IMAGE_CACHE) -runs $(BENCH_IMAGE_RUNS)

test-image:
	$(GO) test ./internal/image/...
