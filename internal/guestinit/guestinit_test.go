package guestinit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hypervm/hyper/internal/guestcfg"
)

func TestSplitCmdline(t *testing.T) {
	got := SplitCmdline("console=ttyS0  reboot=k panic=1 foo=\"a b\" \"x y\"=z\n")
	want := []string{"console=ttyS0", "reboot=k", "panic=1", "foo=a b", "x y=z"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if got := SplitCmdline("   "); got != nil {
		t.Fatalf("blank line: %q", got)
	}
}

func TestModuleParams(t *testing.T) {
	// Firecracker announces each virtio-mmio device this way.
	args := SplitCmdline(`console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio-mmio.device=4K@0xd0001000:6 ` +
		`overlay.redirect_dir=on foo.bar="x y" .bad=1 nodot=1 -- init.arg=1`)
	got := ModuleParams(args)
	want := map[string]string{
		"virtio_mmio": "device=4K@0xd0000000:5 device=4K@0xd0001000:6",
		"overlay":     "redirect_dir=on",
		"foo":         `bar="x y"`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

func TestLoadOrder(t *testing.T) {
	dep := `kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/overlayfs/overlay.ko:
`
	order, err := LoadOrder([]byte(dep))
	if err != nil {
		t.Fatal(err)
	}
	if len(order) != 7 {
		t.Fatalf("order has %d modules: %v", len(order), order)
	}
	pos := map[string]int{}
	for i, m := range order {
		pos[ModuleName(m)] = i
	}
	for mod, deps := range map[string][]string{
		"virtio":       {"virtio_ring"},
		"virtio_mmio":  {"virtio", "virtio_ring"},
		"virtio_net":   {"virtio", "virtio_ring", "net_failover", "failover"},
		"net_failover": {"failover"},
	} {
		for _, d := range deps {
			if pos[d] > pos[mod] {
				t.Errorf("%s loads before its dependency %s: %v", mod, d, order)
			}
		}
	}
	again, _ := LoadOrder([]byte(dep))
	if diff := cmp.Diff(order, again); diff != "" {
		t.Fatal("order is not stable")
	}
}

func TestLoadOrderErrors(t *testing.T) {
	for name, tc := range map[string]struct{ dep, want string }{
		"missing dependency": {"a.ko: b.ko\n", "a.ko needs b.ko"},
		"cycle":              {"a.ko: b.ko\nb.ko: a.ko\n", "cycle"},
		"no colon":           {"a.ko b.ko\n", "line 1"},
		"listed twice":       {"a.ko:\na.ko:\n", "twice"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadOrder([]byte(tc.dep))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/virtio/virtio_mmio.ko":  "virtio_mmio",
		"kernel/net/vmw_vsock/vsock-diag.ko.xz": "vsock_diag",
		"kernel/fs/overlayfs/overlay.ko.zst":    "overlay",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMakePlan(t *testing.T) {
	p := MakePlan()
	var got []string
	for _, m := range p.Mounts {
		got = append(got, m.FSType+" "+m.Source+" "+m.Target+" "+m.Data)
	}
	want := []string{
		"tmpfs tmpfs /run mode=0755",
		"ext4 /dev/vda " + guestcfg.MountBase + " ",
		"ext4 /dev/vdb " + guestcfg.MountWritable + " noinit_itable",
		"overlay overlay /newroot lowerdir=/run/hyper/base,upperdir=/run/hyper/writable/upper,workdir=/run/hyper/writable/work",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("mounts (-want +got):\n%s", diff)
	}
	if p.Mounts[1].Flags&1 == 0 { // MS_RDONLY
		t.Error("base disk is not mounted read-only")
	}
	if p.Mounts[2].Flags&1 != 0 {
		t.Error("writable disk is mounted read-only")
	}
	// Every mount point lies under the staging /run until the moves.
	for _, m := range p.Mounts[1:3] {
		if !strings.HasPrefix(m.Target, "/run/") {
			t.Errorf("%s is not under /run", m.Target)
		}
	}
	if p.Moves[0] != (Move{From: "/run", To: "/newroot/run"}) {
		t.Errorf("first move = %+v, want /run into the new root", p.Moves[0])
	}
}

func TestIsStage1FalseOnHost(t *testing.T) {
	if IsStage1() {
		t.Fatal("IsStage1 is true in a host test process")
	}
}

const testDep = `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/drivers/virtio/virtio.ko kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio_ring.ko kernel/net/vmw_vsock/vsock.ko
kernel/fs/overlayfs/overlay.ko:
`

const testAlias = `alias of:N*T*Cvirtio,mmio virtio_mmio
alias acpi*:LNRO0005:* virtio_mmio
alias virtio:d00000002v* virtio_blk
alias virtio:d00000003v* virtio_console
alias virtio:d00000001v* virtio_net
alias virtio:d00000013v* vmw_vsock_virtio_transport
alias fs-overlay overlay
`

func names(paths []string) []string {
	var out []string
	for _, p := range paths {
		out = append(out, ModuleName(p))
	}
	return out
}

func TestModulesCoreThenPresentDrivers(t *testing.T) {
	m, err := ParseModules([]byte(testDep), []byte(testAlias))
	if err != nil {
		t.Fatal(err)
	}
	core := m.Core()
	if diff := cmp.Diff([]string{"virtio_ring", "virtio", "virtio_mmio", "overlay"}, names(core)); diff != "" {
		t.Fatalf("core (-want +got):\n%s", diff)
	}
	// QEMU's microvm here: two disks and a virtio-serial device.
	qemu := m.Drivers([]uint32{2, 2, 3}, core)
	if diff := cmp.Diff([]string{"virtio_blk", "virtio_console"}, names(qemu)); diff != "" {
		t.Fatalf("drivers for qemu (-want +got):\n%s", diff)
	}
	// Firecracker: disks, vsock and a network device.
	fc := names(m.Drivers([]uint32{2, 19, 1}, core))
	pos := map[string]int{}
	for i, n := range fc {
		pos[n] = i
	}
	for _, want := range []string{"virtio_blk", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "failover", "net_failover", "virtio_net"} {
		if _, ok := pos[want]; !ok {
			t.Errorf("firecracker drivers lack %s: %v", want, fc)
		}
	}
	if pos["vsock"] > pos["vmw_vsock_virtio_transport"] || pos["failover"] > pos["virtio_net"] {
		t.Errorf("dependency loads after its user: %v", fc)
	}
	if _, ok := pos["virtio_console"]; ok {
		t.Errorf("virtio_console loaded without its device: %v", fc)
	}
	if got := m.Drivers(nil, core); len(got) != 0 {
		t.Errorf("drivers with no devices: %v", names(got))
	}
}

func TestModulesWithoutAliasesLoadEverything(t *testing.T) {
	m, err := ParseModules([]byte(testDep), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(m.Core()); got != 12 {
		t.Fatalf("core has %d modules, want all 12", got)
	}
	if _, err := ParseModules([]byte(testDep), []byte("alias only-two\n")); err == nil {
		t.Fatal("malformed modules.alias accepted")
	}
}

func TestFreeInitramfs(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"lib/modules/6.1/kernel/fs", "dev", "newroot"} {
		if err := os.MkdirAll(filepath.Join(dir, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"init", "lib/modules/6.1/modules.dep", "lib/modules/6.1/kernel/fs/overlay.ko"} {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("init", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := freeInitramfs(r); err != nil {
		t.Fatal(err)
	}
	left, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
	if _, err := r.Stat("."); err == nil {
		t.Error("the initramfs root is still open")
	}
}
