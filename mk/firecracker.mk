# The Firecracker driver (internal/vmm/firecracker) and its strict stand-ins
# for hosts where Firecracker cannot run (internal/vmm/firecracker/fctest).
#
#   make fctest-standins    build the stand-ins as bin/fctest/firecracker and
#                           bin/fctest/jailer (the basenames the helper pins),
#                           with the host's qemu-system-x86_64 linked in
#   make test-firecracker   the driver's, client's and stand-ins' tests; the
#                           real-guest boot needs qemu-system-x86, e2fsprogs,
#                           busybox-static and the test kernel (guesttest)
FCTEST_BIN  ?= $(BIN)/fctest
FCTEST_QEMU ?= $(shell command -v qemu-system-x86_64 || echo /usr/bin/qemu-system-x86_64)

.PHONY: fctest-standins test-firecracker

fctest-standins:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-X main.qemu=$(FCTEST_QEMU)' -o $(FCTEST_BIN)/firecracker ./internal/vmm/firecracker/fctest/cmd/firecracker
	CGO_ENABLED=0 $(GO) build -trimpath -o $(FCTEST_BIN)/jailer ./internal/vmm/firecracker/fctest/cmd/jailer

test-firecracker:
	$(GO) test -count=1 ./internal/vmm/firecracker/...
