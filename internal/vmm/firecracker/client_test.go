package firecracker

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hypervm/hyper/internal/vmm/firecracker/fctest/fakefc"
)

// capture serves h on a unix socket and returns a client for it.
func capture(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return NewClient(sock)
}

// TestRequestBodies pins the wire form: required fields always present
// (false included), optional ones omitted when unset, never null.
func TestRequestBodies(t *testing.T) {
	var got []string
	c := capture(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = append(got, r.Method+" "+r.URL.Path+" "+string(b))
		if r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: content type %q", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		w.WriteHeader(http.StatusNoContent)
	})
	ctx := context.Background()
	for _, err := range []error{
		c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 512}),
		c.PutBootSource(ctx, BootSource{KernelImagePath: "/vmlinux", InitrdPath: "/initrd.img", BootArgs: "quiet"}),
		c.PutBootSource(ctx, BootSource{KernelImagePath: "/vmlinux"}),
		c.PutDrive(ctx, Drive{DriveID: "disk", PathOnHost: "/disk.ext4"}),
		c.PutDrive(ctx, Drive{DriveID: "base", PathOnHost: "/base.ext4", IsReadOnly: true, RateLimiter: bandwidthLimiter(1 << 20)}),
		c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "/vsock.socket"}),
		c.Action(ctx, ActionInstanceStart),
		c.PatchVM(ctx, VMPaused),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		`PUT /machine-config {"vcpu_count":2,"mem_size_mib":512}`,
		`PUT /boot-source {"kernel_image_path":"/vmlinux","initrd_path":"/initrd.img","boot_args":"quiet"}`,
		`PUT /boot-source {"kernel_image_path":"/vmlinux"}`,
		`PUT /drives/disk {"drive_id":"disk","path_on_host":"/disk.ext4","is_root_device":false,"is_read_only":false}`,
		`PUT /drives/base {"drive_id":"base","path_on_host":"/base.ext4","is_root_device":false,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":1048576,"refill_time":1000}}}`,
		`PUT /vsock {"guest_cid":3,"uds_path":"/vsock.socket"}`,
		`PUT /actions {"action_type":"InstanceStart"}`,
		`PATCH /vm {"state":"Paused"}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if bandwidthLimiter(0) != nil {
		t.Error("no bandwidth limit must mean no rate limiter")
	}
}

func TestErrors(t *testing.T) {
	c := capture(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/machine-config":
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"fault_message":"The memory size (MiB) is invalid."}`)
		case "/actions":
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, "boom")
		case "/":
			w.WriteHeader(http.StatusNoContent)
		}
	})
	ctx := context.Background()
	err := c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1})
	e, ok := IsAPIError(err)
	if !ok || e.StatusCode != 400 || e.FaultMessage != "The memory size (MiB) is invalid." {
		t.Fatalf("got %#v", err)
	}
	if want := "firecracker PUT /machine-config: 400 Bad Request: The memory size (MiB) is invalid."; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	err = c.Action(ctx, ActionInstanceStart)
	if e, ok := IsAPIError(err); !ok || e.StatusCode != 500 || e.Body != "boom" {
		t.Errorf("got %#v", err)
	}
	if _, err := c.Describe(ctx); err == nil || !strings.Contains(err.Error(), "no body") {
		t.Errorf("GET / without a body: %v", err)
	}
	_, err = NewClient(filepath.Join(t.TempDir(), "absent.sock")).Describe(ctx)
	if _, ok := IsAPIError(err); ok || err == nil {
		t.Errorf("missing socket: %v, want a transport error", err)
	}
	if !errors.Is(err, errNoSuchFile()) {
		t.Errorf("missing socket: %v, want ENOENT", err)
	}
}

func errNoSuchFile() error {
	_, err := net.Dial("unix", "/nonexistent/socket")
	var op *net.OpError
	if errors.As(err, &op) {
		return errors.Unwrap(op.Err)
	}
	return err
}

type noMachine struct{}

func (noMachine) Boot(context.Context, fakefc.BootSpec) error { return nil }
func (noMachine) Pause(context.Context) error                 { return nil }
func (noMachine) Resume(context.Context) error                { return nil }
func (noMachine) CtrlAltDel(context.Context) error            { return nil }
func (noMachine) Done() <-chan struct{}                       { return nil }
func (noMachine) DialPort(context.Context, uint32) (net.Conn, error) {
	return nil, fakefc.ErrNoListener
}

// TestAgainstStandIn sends the driver's whole configuration to the strict
// stand-in, whose schema is transcribed separately from the driver's
// types: a field the driver misnames is refused there.
func TestAgainstStandIn(t *testing.T) {
	root := t.TempDir()
	elf := make([]byte, 64)
	copy(elf, "\x7fELF\x02\x01\x01")
	elf[16], elf[18], elf[20], elf[52] = 2, 62, 1, 64
	files := map[string][]byte{"vmlinux": elf, "initrd.img": []byte("x"), "base.ext4": make([]byte, 512), "disk.ext4": make([]byte, 512), "config.img": make([]byte, 4096)}
	for name, b := range files {
		writeFile(t, filepath.Join(root, name), b)
	}
	srv, err := fakefc.New("vtest", root, noMachine{}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	c := capture(t, srv.ServeHTTP)
	ctx := context.Background()
	steps := []error{
		c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 256}),
		c.PutBootSource(ctx, BootSource{KernelImagePath: jailKernel, InitrdPath: jailInitrd, BootArgs: DefaultCmdline}),
		c.PutDrive(ctx, Drive{DriveID: DriveBase, PathOnHost: jailBase, IsReadOnly: true, RateLimiter: bandwidthLimiter(100 << 20)}),
		c.PutDrive(ctx, Drive{DriveID: DriveDisk, PathOnHost: jailDisk, RateLimiter: bandwidthLimiter(100 << 20)}),
		c.PutDrive(ctx, Drive{DriveID: DriveConfig, PathOnHost: jailConfig, IsReadOnly: true}),
		c.PutVsock(ctx, Vsock{GuestCID: GuestCID, UDSPath: jailVsock}),
		c.Action(ctx, ActionInstanceStart),
		c.PatchVM(ctx, VMPaused),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	info, err := c.Describe(ctx)
	if err != nil || info.State != InstancePaused || info.ID != "vtest" {
		t.Fatalf("describe: %+v %v", info, err)
	}
	err = c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128})
	if e, ok := IsAPIError(err); !ok || e.StatusCode != 400 || !strings.Contains(e.FaultMessage, "after starting") {
		t.Errorf("machine config after start: %v", err)
	}
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
