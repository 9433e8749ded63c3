package fakefc

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is a Machine that records the boot and echoes on port 1024
// once listening is set.
type recorder struct {
	mu        sync.Mutex
	spec      *BootSpec
	paused    bool
	listening atomic.Bool
	done      chan struct{}
}

func (r *recorder) Boot(_ context.Context, spec BootSpec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spec = &spec
	return nil
}
func (r *recorder) Pause(context.Context) error      { r.paused = true; return nil }
func (r *recorder) Resume(context.Context) error     { r.paused = false; return nil }
func (r *recorder) CtrlAltDel(context.Context) error { return nil }
func (r *recorder) Done() <-chan struct{}            { return r.done }
func (r *recorder) DialPort(_ context.Context, port uint32) (net.Conn, error) {
	if port != AgentPort || !r.listening.Load() {
		return nil, ErrNoListener
	}
	a, b := net.Pipe()
	go func() {
		io.Copy(b, b)
		b.Close()
	}()
	return a, nil
}

// minimalELF is the smallest file Firecracker's loader would take as an
// x86-64 ELF executable.
func minimalELF() []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1                // 64-bit, little endian, version 1
	binary.LittleEndian.PutUint16(h[16:], 2)  // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], 62) // EM_X86_64
	binary.LittleEndian.PutUint32(h[20:], 1)
	binary.LittleEndian.PutUint16(h[52:], 64) // e_ehsize
	return h
}

type rig struct {
	t    *testing.T
	root string
	m    *recorder
	srv  *Server
	hc   *http.Client
}

func newRig(t *testing.T) *rig {
	t.Helper()
	root := t.TempDir()
	for name, body := range map[string][]byte{
		"vmlinux":    minimalELF(),
		"bzImage":    append([]byte("MZ"), make([]byte, 600)...),
		"initrd.img": []byte("07070100"),
		"base.ext4":  make([]byte, 4096),
		"disk.ext4":  make([]byte, 4096),
		"taken":      nil,
	} {
		if err := os.WriteFile(filepath.Join(root, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A link that would leave a real chroot must not leave this one.
	if err := os.Symlink("/etc/hostname", filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	m := &recorder{done: make(chan struct{})}
	srv, err := New("vm-1", root, m, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(l)
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
	})
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	return &rig{t: t, root: root, m: m, srv: srv, hc: hc}
}

// call sends one request and returns the status and fault message.
func (r *rig) call(method, path, body string) (int, string) {
	r.t.Helper()
	req, err := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	json.Unmarshal(raw, &f)
	return resp.StatusCode, f.FaultMessage
}

func (r *rig) mustOK(method, path, body string) {
	r.t.Helper()
	if status, fault := r.call(method, path, body); status != http.StatusNoContent {
		r.t.Fatalf("%s %s %s: %d %s", method, path, body, status, fault)
	}
}

// configure applies a complete, valid configuration.
func (r *rig) configure() {
	r.mustOK("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`)
	r.mustOK("PUT", "/boot-source", `{"kernel_image_path":"/vmlinux","initrd_path":"/initrd.img","boot_args":"console=ttyS0"}`)
	r.mustOK("PUT", "/drives/base", `{"drive_id":"base","path_on_host":"/base.ext4","is_root_device":false,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":1048576,"refill_time":1000}}}`)
	r.mustOK("PUT", "/drives/disk", `{"drive_id":"disk","path_on_host":"/disk.ext4","is_root_device":false,"is_read_only":false}`)
	r.mustOK("PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v.sock"}`)
}

func TestRejectedBeforeStart(t *testing.T) {
	r := newRig(t)
	r.mustOK("PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/base.ext4","is_root_device":true,"is_read_only":true}`)
	big := `{"vcpu_count":1,"mem_size_mib":128,"x":"` + strings.Repeat("a", maxPayload) + `"}`
	cases := []struct {
		name, method, path, body, want string
	}{
		{"unknown path", "GET", "/nope", "", "Invalid request method and/or path: GET /nope."},
		{"wrong method", "DELETE", "/machine-config", "", "Invalid request method and/or path: DELETE /machine-config."},
		{"get with body", "GET", "/", `{}`, "GET request cannot have a body."},
		{"unemulated path", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`, "does not emulate PUT /network-interfaces/eth0"},
		{"payload too large", "PUT", "/machine-config", big, "larger than the limit of 51200"},
		{"empty body", "PUT", "/machine-config", "", "Empty request body."},
		{"not an object", "PUT", "/machine-config", `[1]`, "An error occurred when deserializing the json body of a request: invalid type: array, expected an object."},
		{"bad json", "PUT", "/machine-config", `{"vcpu_count":`, "An error occurred when deserializing the json body of a request"},
		{"missing required", "PUT", "/machine-config", `{"vcpu_count":2}`, "missing field `mem_size_mib`"},
		{"unknown field", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"ht_enabled":false}`, "unknown field `ht_enabled`, expected one of `vcpu_count`"},
		{"string for integer", "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":256}`, "invalid type: \"2\", expected an integer for field `vcpu_count`"},
		{"float for integer", "PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":256}`, "invalid type: 1.5, expected an integer"},
		{"zero vcpus", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":256}`, "invalid value: integer `0`, expected a value from 1 to 32 for field `vcpu_count`"},
		{"33 vcpus", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":256}`, "invalid value: integer `33`"},
		{"odd vcpus with smt", "PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":256,"smt":true}`, "The vCPU number is invalid!"},
		{"zero memory", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":0}`, "The memory size (MiB) is invalid."},
		{"explicit null", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":256,"smt":null}`, "invalid type: null, expected a boolean for field `smt`"},
		{"bad enum", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":256,"huge_pages":"1G"}`, "unknown variant `1G`, expected one of `None`, `Transparent`, `2M`"},
		{"boot source without kernel", "PUT", "/boot-source", `{"boot_args":"quiet"}`, "missing field `kernel_image_path`"},
		{"missing kernel", "PUT", "/boot-source", `{"kernel_image_path":"/nope"}`, "The kernel file cannot be opened"},
		{"kernel outside the jail", "PUT", "/boot-source", `{"kernel_image_path":"/../../../../../../etc/hostname"}`, "The kernel file cannot be opened"},
		{"kernel through a symlink out of the jail", "PUT", "/boot-source", `{"kernel_image_path":"/escape"}`, "The kernel file cannot be opened"},
		{"missing initrd", "PUT", "/boot-source", `{"kernel_image_path":"/vmlinux","initrd_path":"/nope.img"}`, "The initrd file cannot be opened"},
		{"long cmdline", "PUT", "/boot-source", `{"kernel_image_path":"/vmlinux","boot_args":"` + strings.Repeat("a", maxCmdline) + `"}`, "The kernel command line is invalid"},
		{"drive id mismatch", "PUT", "/drives/base", `{"drive_id":"disk","path_on_host":"/base.ext4","is_root_device":false,"is_read_only":true}`, "The id from the path [base] does not match the id from the body [disk]!"},
		{"bad drive id", "PUT", "/drives/ba.se", `{"drive_id":"ba.se","path_on_host":"/base.ext4","is_root_device":false,"is_read_only":true}`, "Invalid ID"},
		{"drive without is_root_device", "PUT", "/drives/base", `{"drive_id":"base","path_on_host":"/base.ext4","is_read_only":true}`, "missing field `is_root_device`"},
		{"drive without path", "PUT", "/drives/base", `{"drive_id":"base","is_root_device":false,"is_read_only":true}`, "path_on_host and is_read_only are required"},
		{"drive without is_read_only", "PUT", "/drives/base", `{"drive_id":"base","path_on_host":"/base.ext4","is_root_device":false}`, "path_on_host and is_read_only are required"},
		{"missing drive file", "PUT", "/drives/base", `{"drive_id":"base","path_on_host":"/nope.ext4","is_root_device":false,"is_read_only":true}`, "the backing file cannot be opened"},
		{"second root device", "PUT", "/drives/other", `{"drive_id":"other","path_on_host":"/disk.ext4","is_root_device":true,"is_read_only":false}`, "A root block device already exists!"},
		{"bucket without refill_time", "PUT", "/drives/base", `{"drive_id":"base","path_on_host":"/base.ext4","is_root_device":false,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":100}}}`, "in `rate_limiter.bandwidth`: missing field `refill_time`"},
		{"negative bucket size", "PUT", "/drives/base", `{"drive_id":"base","path_on_host":"/base.ext4","is_root_device":false,"is_read_only":true,"rate_limiter":{"ops":{"size":-1,"refill_time":1000}}}`, "invalid value: integer `-1`"},
		{"unknown rate limiter field", "PUT", "/drives/base", `{"drive_id":"base","path_on_host":"/base.ext4","is_root_device":false,"is_read_only":true,"rate_limiter":{"bytes":{}}}`, "in `rate_limiter`: unknown field `bytes`"},
		{"bad cache type", "PUT", "/drives/base", `{"drive_id":"base","path_on_host":"/base.ext4","is_root_device":false,"is_read_only":true,"cache_type":"None"}`, "unknown variant `None`, expected one of `Unsafe`, `Writeback`"},
		{"guest cid 2", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v.sock"}`, "invalid value: integer `2`, expected a value from 3 to 4294967295 for field `guest_cid`"},
		{"vsock without uds_path", "PUT", "/vsock", `{"guest_cid":3}`, "missing field `uds_path`"},
		{"vsock path taken", "PUT", "/vsock", `{"guest_cid":3,"uds_path":"/taken"}`, "address already in use (os error 98)"},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`, "unknown variant `Reboot`"},
		{"start without kernel", "PUT", "/actions", `{"action_type":"InstanceStart"}`, "Cannot start microvm without kernel configuration."},
		{"ctrl-alt-del before start", "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, "The requested operation is not supported before starting the microVM."},
		{"pause before start", "PATCH", "/vm", `{"state":"Paused"}`, "The requested operation is not supported before starting the microVM."},
		{"bad vm state", "PATCH", "/vm", `{"state":"Stopped"}`, "unknown variant `Stopped`, expected one of `Paused`, `Resumed`"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, fault := r.call(c.method, c.path, c.body)
			if status != http.StatusBadRequest || !strings.Contains(fault, c.want) {
				t.Errorf("%s %s: got %d %q, want 400 with %q", c.method, c.path, status, fault, c.want)
			}
		})
	}
	if r.m.spec != nil {
		t.Error("a rejected request booted the machine")
	}
}

func TestBzImageRefused(t *testing.T) {
	r := newRig(t)
	r.mustOK("PUT", "/boot-source", `{"kernel_image_path":"/bzImage"}`)
	status, fault := r.call("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if status != http.StatusBadRequest || !strings.Contains(fault, "Invalid Elf magic number") {
		t.Fatalf("got %d %q", status, fault)
	}
}

func TestRejectedAfterStart(t *testing.T) {
	r := newRig(t)
	r.configure()
	r.mustOK("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	for _, c := range []struct{ method, path, body string }{
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"PUT", "/boot-source", `{"kernel_image_path":"/vmlinux"}`},
		{"PUT", "/drives/base", `{"drive_id":"base","path_on_host":"/base.ext4","is_root_device":false,"is_read_only":true}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/w.sock"}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	} {
		status, fault := r.call(c.method, c.path, c.body)
		if status != http.StatusBadRequest || fault != "The requested operation is not supported after starting the microVM." {
			t.Errorf("%s %s after start: got %d %q", c.method, c.path, status, fault)
		}
	}
}

func TestBootSpecAndState(t *testing.T) {
	r := newRig(t)
	if status, _ := r.call("GET", "/", ""); status != http.StatusOK {
		t.Fatalf("GET /: %d", status)
	}
	r.configure()
	// Replacing a drive keeps its place in the order.
	r.mustOK("PUT", "/drives/base", `{"drive_id":"base","path_on_host":"/base.ext4","is_root_device":false,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":500,"refill_time":100},"ops":{"size":10,"refill_time":1000}}}`)
	r.mustOK("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	spec := r.m.spec
	if spec == nil {
		t.Fatal("not booted")
	}
	if spec.VCPUs != 2 || spec.MemMiB != 256 || spec.Cmdline != "console=ttyS0" || spec.Initrd == nil {
		t.Errorf("boot spec: %+v", spec)
	}
	if len(spec.Drives) != 2 || spec.Drives[0].ID != "base" || !spec.Drives[0].ReadOnly || spec.Drives[1].ID != "disk" || spec.Drives[1].ReadOnly {
		t.Fatalf("drives: %+v", spec.Drives)
	}
	if spec.Drives[0].BytesPerSec != 5000 || spec.Drives[0].OpsPerSec != 10 || spec.Drives[1].BytesPerSec != 0 {
		t.Errorf("rates: %+v", spec.Drives)
	}
	state := func() string {
		req, _ := http.NewRequest("GET", "http://localhost/", nil)
		resp, err := r.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var info map[string]string
		json.NewDecoder(resp.Body).Decode(&info)
		if info["id"] != "vm-1" || info["app_name"] != "Firecracker" {
			t.Errorf("info: %v", info)
		}
		return info["state"]
	}
	if s := state(); s != "Running" {
		t.Errorf("state %q, want Running", s)
	}
	r.mustOK("PATCH", "/vm", `{"state":"Paused"}`)
	if s := state(); s != "Paused" || !r.m.paused {
		t.Errorf("state %q, want Paused", s)
	}
	r.mustOK("PATCH", "/vm", `{"state":"Resumed"}`)
	if s := state(); s != "Running" || r.m.paused {
		t.Errorf("state %q, want Running", s)
	}
}

func TestRootDeviceFirst(t *testing.T) {
	r := newRig(t)
	r.mustOK("PUT", "/boot-source", `{"kernel_image_path":"/vmlinux"}`)
	r.mustOK("PUT", "/drives/data", `{"drive_id":"data","path_on_host":"/disk.ext4","is_root_device":false,"is_read_only":false}`)
	r.mustOK("PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/base.ext4","is_root_device":true,"is_read_only":true}`)
	r.mustOK("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if d := r.m.spec.Drives; d[0].ID != "rootfs" || d[1].ID != "data" {
		t.Errorf("order %s, %s; want the root device first", d[0].ID, d[1].ID)
	}
	if !strings.HasSuffix(r.m.spec.Cmdline, "root=/dev/vda ro") {
		t.Errorf("cmdline %q", r.m.spec.Cmdline)
	}
}

// vsockDial sends a CONNECT line and returns the answer line ("" when the
// stand-in closed the connection) and the connection.
func vsockDial(t *testing.T, path, line string) (string, net.Conn) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, line)
	answer, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", c
	}
	return answer, c
}

func TestVsockBridge(t *testing.T) {
	r := newRig(t)
	r.configure()
	sock := filepath.Join(r.root, "v.sock")
	if answer, _ := vsockDial(t, sock, "CONNECT 1024\n"); answer != "" {
		t.Errorf("before start: got %q, want the connection closed", answer)
	}
	r.mustOK("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if answer, _ := vsockDial(t, sock, "CONNECT 1024\n"); answer != "" {
		t.Errorf("nothing listening: got %q, want the connection closed", answer)
	}
	r.m.listening.Store(true)
	for _, bad := range []string{"CONNECT 52\n", "HELLO 1024\n", "CONNECT x\n", "CONNECT " + strings.Repeat("1", 40) + "\n"} {
		if answer, _ := vsockDial(t, sock, bad); answer != "" {
			t.Errorf("%q: got %q, want the connection closed", bad, answer)
		}
	}
	answer, c := vsockDial(t, sock, "CONNECT 1024\n")
	if !strings.HasPrefix(answer, "OK ") {
		t.Fatalf("got %q, want OK <port>", answer)
	}
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
}

func TestParseArgs(t *testing.T) {
	good := [][]string{
		{"--id=vabc", "--start-time-us=1", "--start-time-cpu-us=2", "--api-sock", "/api.socket"},
		{"--api-sock=/x.sock", "--level", "Debug", "--no-seccomp"},
		{},
	}
	for _, argv := range good {
		if _, err := ParseArgs(argv); err != nil {
			t.Errorf("%q: %v", argv, err)
		}
	}
	bad := map[string][]string{
		"unknown flag":    {"--frobnicate"},
		"positional":      {"api.socket"},
		"repeated":        {"--id", "a", "--id", "b"},
		"missing value":   {"--api-sock"},
		"bad id":          {"--id", "a_b"},
		"long id":         {"--id", strings.Repeat("a", 65)},
		"bad int":         {"--start-time-us", "-1"},
		"bad level":       {"--level", "loud"},
		"unemulated":      {"--config-file", "/c.json"},
		"value on switch": {"--no-seccomp=1"},
	}
	for name, argv := range bad {
		if _, err := ParseArgs(argv); err == nil {
			t.Errorf("%s: %q accepted", name, argv)
		}
	}
}
