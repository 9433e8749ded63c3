# Guest kernel and boot benchmark (internal/guest, internal/vmm/qemu).
# KERNEL_DIR is the kernel cache; the tests use /var/cache/hyper-test/kernel.
KERNEL_DIR ?= /var/cache/hyper-test/kernel
BENCH_BOOT_FLAGS ?=

.PHONY: kernel repin-kernel bench-boot

# Fetch the pinned guest kernel (apt-get download), verify its sha256 and
# unpack vmlinuz, vmlinux and the modules into KERNEL_DIR.
kernel:
	$(GO) run ./internal/guest/internal/kerneltool fetch -dir $(KERNEL_DIR)

# Re-pin internal/guest/kernels.json to the cloud kernel the Debian mirror
# serves now (run `apt-get update` first).
repin-kernel:
	$(GO) run ./internal/guest/internal/kerneltool repin -manifest internal/guest/kernels.json

# Time from driver start to the agent's Health against the same kernel
# booted bare with a one-line init, under QEMU.
bench-boot:
	$(GO) run ./internal/vmm/qemu/internal/bench -kernel-dir $(KERNEL_DIR) $(BENCH_BOOT_FLAGS)
