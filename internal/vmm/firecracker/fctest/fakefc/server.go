// Package fakefc is a strict stand-in for Firecracker, for hosts where
// Firecracker cannot run. It serves Firecracker's REST API, validating
// every request against Firecracker's published API (paths and methods,
// required and unknown fields, explicit nulls, types, enums and ranges,
// files that must exist in the jail, what is allowed before and after
// InstanceStart) and answering 400 with a Firecracker-style fault_message
// otherwise. Parts of the API it does not emulate (network, balloon,
// snapshots, MMDS, logger, metrics, ...) are refused, never pretended. On
// InstanceStart it boots the configured kernel, initrd and drives on a
// Machine (QEMU's microvm in the stand-in program) and bridges
// Firecracker's hybrid vsock protocol on the configured unix socket.
//
// What is simulated, and why:
//   - The chroot. The stand-in runs with its working directory at the jail
//     root and no chroot(2), because the QEMU it starts needs the host's
//     files; every in-jail path the API names is resolved beneath that root
//     with openat2(RESOLVE_IN_ROOT), which applies chroot's rules to "..",
//     absolute symlinks and the like, and sockets are bound under it.
//   - The machine. QEMU's microvm under TCG boots the same ELF vmlinux
//     through its PVH entry point; drives are virtio-blk devices in
//     Firecracker's order (root device first, then the order configured),
//     rate limiters become QEMU throttling. The guest gets
//     tsc_early_khz=<host TSC> tsc=reliable on its command line, standing in
//     for the kvm-clock it would have under Firecracker (without it the
//     kernel stalls calibrating its TSC). Firecracker's own additions to the
//     command line (virtio_mmio.device=...) are not made: microvm announces
//     its devices through ACPI.
//   - vsock. There is no vhost-vsock here: the guest agent's port
//     (AgentPort) is a virtio-serial port named AgentPortName, and the
//     bridge answers "CONNECT 1024" only while the guest holds that port
//     open (QMP VSERPORT_CHANGE), closing the connection otherwise as
//     Firecracker does when nothing listens. Other ports are always closed.
//     A virtio-serial port is one stream, so a second concurrent connection
//     is closed too, where Firecracker would carry both.
//   - Exit. As Firecracker on x86, the stand-in exits when the guest resets
//     (reboot, panic=N, Ctrl+Alt+Del) and keeps running with the guest
//     halted when it powers off.
package fakefc

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Version is what the stand-in reports as vmm_version.
const Version = "1.16.0"

// Machine runs the guest once Firecracker's configuration is complete.
type Machine interface {
	// Boot starts the guest; the files in spec stay open until Boot
	// returns (the machine must open its own references).
	Boot(ctx context.Context, spec BootSpec) error
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// CtrlAltDel presses Ctrl+Alt+Del on the guest's keyboard.
	CtrlAltDel(ctx context.Context) error
	// DialPort connects to guest vsock port port; ErrNoListener when
	// nothing in the guest listens on it.
	DialPort(ctx context.Context, port uint32) (net.Conn, error)
	// Done is closed when the guest has ended.
	Done() <-chan struct{}
}

// ErrNoListener is returned by Machine.DialPort for a port nothing in the
// guest listens on.
var ErrNoListener = errors.New("no listener on the guest port")

// BootSpec is the guest Firecracker would boot.
type BootSpec struct {
	VCPUs   int
	MemMiB  int64
	Kernel  *os.File
	Initrd  *os.File // nil without an initrd
	Cmdline string
	// Drives in the order the guest sees them: the root device first,
	// then the others in the order they were configured.
	Drives []DriveSpec
}

// DriveSpec is one block device.
type DriveSpec struct {
	ID          string
	File        *os.File
	ReadOnly    bool
	BytesPerSec int64 // 0: unlimited
	OpsPerSec   int64
}

// maxPayload is Firecracker's default --http-api-max-payload-size.
const maxPayload = 51200

// maxCmdline is the x86 kernel command line limit Firecracker enforces.
const maxCmdline = 2048

// Server is one stand-in Firecracker's API.
type Server struct {
	id       string
	root     string   // the simulated chroot, as a host path
	rootDir  *os.File // held open for RESOLVE_IN_ROOT lookups
	machine  Machine
	logf     func(format string, args ...any)
	mu       sync.Mutex
	started  bool
	paused   bool
	vcpus    int64
	memMiB   int64
	smt      bool
	boot     *bootSource
	drives   []*drive
	vsock    *vsockDevice
	nextPort uint32
}

type bootSource struct {
	kernel, initrd *os.File
	args           string
}

type drive struct {
	id       string
	file     *os.File
	root     bool
	readOnly bool
	bps, ops int64
}

// New returns a server for instance id whose jail root is root.
func New(id, root string, m Machine, logf func(format string, args ...any)) (*Server, error) {
	d, err := os.Open(root)
	if err != nil {
		return nil, fmt.Errorf("open jail root: %w", err)
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	// Firecracker's defaults before PUT /machine-config.
	return &Server{id: id, root: root, rootDir: d, machine: m, logf: logf, vcpus: 1, memMiB: 128, nextPort: 1 << 30}, nil
}

// Close releases the server's files and vsock socket.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vsock != nil {
		s.vsock.close()
		s.vsock = nil
	}
	if s.boot != nil {
		s.boot.close()
	}
	for _, d := range s.drives {
		d.file.Close()
	}
	s.drives = nil
	return s.rootDir.Close()
}

func (b *bootSource) close() {
	b.kernel.Close()
	if b.initrd != nil {
		b.initrd.Close()
	}
}

// HostPath maps an in-jail path to the host (lexically: for sockets,
// which are created rather than opened).
func (s *Server) HostPath(p string) string {
	return filepath.Join(s.root, filepath.Clean("/"+p))
}

// open opens an in-jail path as the jailed Firecracker would.
func (s *Server) open(p string, flags int) (*os.File, error) {
	fd, err := unix.Openat2(int(s.rootDir.Fd()), p, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return os.NewFile(uintptr(fd), p), nil
}

// ServeHTTP implements the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxPayload+1))
	if err != nil {
		reply(w, http.StatusBadRequest, faultf("Failed to read the request body: %v.", err))
		return
	}
	if len(body) > maxPayload {
		reply(w, http.StatusBadRequest, faultf("Request payload with size %d is larger than the limit of %d allowed by server.", r.ContentLength, maxPayload))
		return
	}
	status, out, err := s.route(r.Context(), r.Method, r.URL.Path, body)
	s.logf("%s %s -> %d %v", r.Method, r.URL.Path, status, err)
	if err != nil {
		reply(w, status, err)
		return
	}
	if out == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(out)
}

func reply(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"fault_message": err.Error()})
}

// Paths of Firecracker's API the stand-in knows but does not emulate: a
// request to one is refused rather than pretended.
var unemulated = []string{"/balloon", "/balloon/statistics", "/balloon/hinting/start", "/balloon/hinting/status",
	"/balloon/hinting/stop", "/cpu-config", "/logger", "/metrics", "/mmds", "/mmds/config", "/entropy",
	"/snapshot/create", "/snapshot/load", "/hotplug/memory", "/serial", "/network-interfaces/", "/pmem/"}

func (s *Server) route(ctx context.Context, method, path string, body []byte) (int, any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	hasBody := len(bytes.TrimSpace(body)) > 0
	if (method == http.MethodGet) && hasBody {
		return http.StatusBadRequest, nil, faultf("GET request cannot have a body.")
	}
	switch {
	case method == http.MethodGet && path == "/":
		return http.StatusOK, s.info(), nil
	case method == http.MethodGet && path == "/version":
		return http.StatusOK, map[string]string{"firecracker_version": Version}, nil
	case method == http.MethodGet && path == "/machine-config":
		return http.StatusOK, map[string]any{"vcpu_count": s.vcpus, "mem_size_mib": s.memMiB, "smt": s.smt, "track_dirty_pages": false}, nil
	case method == http.MethodPut && path == "/machine-config":
		return s.bad(s.putMachineConfig(body))
	case method == http.MethodPut && path == "/boot-source":
		return s.bad(s.putBootSource(body))
	case method == http.MethodPut && strings.HasPrefix(path, "/drives/"):
		return s.bad(s.putDrive(strings.TrimPrefix(path, "/drives/"), body))
	case method == http.MethodPut && path == "/vsock":
		return s.bad(s.putVsock(body))
	case method == http.MethodPut && path == "/actions":
		return s.bad(s.action(ctx, body))
	case method == http.MethodPatch && path == "/vm":
		return s.bad(s.patchVM(ctx, body))
	}
	for _, p := range unemulated {
		if path == p || strings.HasSuffix(p, "/") && strings.HasPrefix(path, p) {
			return http.StatusBadRequest, nil, faultf("The stand-in does not emulate %s %s.", method, path)
		}
	}
	if (path == "/machine-config" || strings.HasPrefix(path, "/drives/")) && method == http.MethodPatch {
		return http.StatusBadRequest, nil, faultf("The stand-in does not emulate %s %s.", method, path)
	}
	return http.StatusBadRequest, nil, faultf("Invalid request method and/or path: %s %s.", method, path)
}

func (s *Server) bad(err error) (int, any, error) {
	if err != nil {
		return http.StatusBadRequest, nil, err
	}
	return http.StatusNoContent, nil, nil
}

func (s *Server) info() map[string]string {
	state := "Not started"
	switch {
	case s.started && s.paused:
		state = "Paused"
	case s.started:
		state = "Running"
	}
	return map[string]string{"app_name": "Firecracker", "id": s.id, "state": state, "vmm_version": Version}
}

var errAfterStart = faultf("The requested operation is not supported after starting the microVM.")
var errBeforeStart = faultf("The requested operation is not supported before starting the microVM.")

func (s *Server) putMachineConfig(body []byte) error {
	if s.started {
		return errAfterStart
	}
	var b machineConfigBody
	if err := decode(body, &b); err != nil {
		return err
	}
	smt := b.SMT != nil && *b.SMT
	if *b.VCPUCount < 1 || *b.VCPUCount > 32 || smt && *b.VCPUCount > 1 && *b.VCPUCount%2 != 0 {
		return faultf("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if *b.MemSizeMiB == 0 {
		return faultf("The memory size (MiB) is invalid.")
	}
	if b.HugePages != nil && *b.HugePages == "2M" && *b.MemSizeMiB%2 != 0 {
		return faultf("The memory size (MiB) must be a multiple of 2 when 2M huge pages are used.")
	}
	if b.CPUTemplate != nil && *b.CPUTemplate != "None" {
		return faultf("The stand-in does not emulate CPU template %s.", *b.CPUTemplate)
	}
	if b.TrackDirtyPages != nil && *b.TrackDirtyPages {
		return faultf("The stand-in does not emulate dirty page tracking.")
	}
	s.vcpus, s.memMiB, s.smt = *b.VCPUCount, *b.MemSizeMiB, smt
	return nil
}

func (s *Server) putBootSource(body []byte) error {
	if s.started {
		return errAfterStart
	}
	var b bootSourceBody
	if err := decode(body, &b); err != nil {
		return err
	}
	args := ""
	if b.BootArgs != nil {
		args = *b.BootArgs
	}
	if len(args) >= maxCmdline || strings.ContainsRune(args, 0) {
		return faultf("The kernel command line is invalid: it must be shorter than %d bytes and hold no NUL.", maxCmdline)
	}
	kernel, err := s.open(*b.KernelImagePath, unix.O_RDONLY)
	if err != nil {
		return faultf("The kernel file cannot be opened: %v", err)
	}
	src := &bootSource{kernel: kernel, args: args}
	if b.InitrdPath != nil {
		if src.initrd, err = s.open(*b.InitrdPath, unix.O_RDONLY); err != nil {
			kernel.Close()
			return faultf("The initrd file cannot be opened due to invalid path or invalid permissions. %v", err)
		}
	}
	if s.boot != nil {
		s.boot.close()
	}
	s.boot = src
	return nil
}

// idPattern is Firecracker's rule for device ids.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

func (s *Server) putDrive(pathID string, body []byte) error {
	if s.started {
		return errAfterStart
	}
	if !idPattern.MatchString(pathID) {
		return faultf("Invalid ID: %q: ids are 1 to 64 characters of [A-Za-z0-9_].", pathID)
	}
	var b driveBody
	if err := decode(body, &b); err != nil {
		return err
	}
	if *b.DriveID != pathID {
		return faultf("The id from the path [%s] does not match the id from the body [%s]!", pathID, *b.DriveID)
	}
	if b.Socket != nil {
		return faultf("The stand-in does not emulate vhost-user-block drives (socket).")
	}
	if b.PathOnHost == nil || b.IsReadOnly == nil {
		return faultf("Unable to create the virtio block device: path_on_host and is_read_only are required for a virtio-block drive.")
	}
	if b.CacheType != nil && *b.CacheType != "Unsafe" || b.IOEngine != nil && *b.IOEngine != "Sync" {
		return faultf("The stand-in emulates only cache_type Unsafe and io_engine Sync.")
	}
	root := *b.IsRootDevice
	if root {
		for _, d := range s.drives {
			if d.root && d.id != pathID {
				return faultf("A root block device already exists!")
			}
		}
	}
	if b.PartUUID != nil && !root {
		return faultf("partuuid is only valid for the root device.")
	}
	flags := unix.O_RDWR
	if *b.IsReadOnly {
		flags = unix.O_RDONLY
	}
	f, err := s.open(*b.PathOnHost, flags)
	if err != nil {
		return faultf("Unable to create the virtio block device: the backing file cannot be opened: %v", err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		f.Close()
		return faultf("Unable to create the virtio block device: %s is not a file or block device.", *b.PathOnHost)
	}
	d := &drive{id: pathID, file: f, root: root, readOnly: *b.IsReadOnly}
	if rl := b.RateLimiter; rl != nil {
		d.bps, d.ops = rl.Bandwidth.rate(), rl.Ops.rate()
	}
	for i, old := range s.drives {
		if old.id == pathID {
			old.file.Close()
			s.drives[i] = d
			return nil
		}
	}
	s.drives = append(s.drives, d)
	return nil
}

// rate is the bucket's sustained rate per second; 0 when the bucket is
// absent or disabled (Firecracker ignores a bucket of size or refill time
// 0).
func (b *tokenBucketBody) rate() int64 {
	if b == nil || *b.Size == 0 || *b.RefillTime == 0 {
		return 0
	}
	return max(*b.Size*1000 / *b.RefillTime, 1)
}

func (s *Server) putVsock(body []byte) error {
	if s.started {
		return errAfterStart
	}
	var b vsockBody
	if err := decode(body, &b); err != nil {
		return err
	}
	if *b.UDSPath == "" {
		return faultf("Cannot create backend for vsock device: the uds_path is empty.")
	}
	// Firecracker binds the host socket here, not at InstanceStart.
	path := s.HostPath(*b.UDSPath)
	l, err := net.Listen("unix", path)
	if err != nil {
		return faultf("Cannot create backend for vsock device: Error binding to the host-side Unix socket: %v", unwrapSyscall(err))
	}
	if s.vsock != nil {
		s.vsock.close()
	}
	s.vsock = newVsockDevice(s, l, uint32(*b.GuestCID))
	return nil
}

func unwrapSyscall(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return fmt.Errorf("%s (os error %d)", errno.Error(), int(errno))
	}
	return err
}

func (s *Server) action(ctx context.Context, body []byte) error {
	var b actionBody
	if err := decode(body, &b); err != nil {
		return err
	}
	switch *b.ActionType {
	case "InstanceStart":
		return s.start(ctx)
	case "SendCtrlAltDel":
		if !s.started {
			return errBeforeStart
		}
		if err := s.machine.CtrlAltDel(ctx); err != nil {
			return faultf("Failed to send CTRL+ALT+DEL: %v", err)
		}
		return nil
	}
	return faultf("The metrics system was not initialized.")
}

func (s *Server) start(ctx context.Context) error {
	if s.started {
		return errAfterStart
	}
	if s.boot == nil {
		return faultf("Cannot start microvm without kernel configuration.")
	}
	if err := checkKernel(s.boot.kernel); err != nil {
		return faultf("Cannot load kernel due to invalid memory configuration or invalid kernel image: %v", err)
	}
	spec := BootSpec{VCPUs: int(s.vcpus), MemMiB: s.memMiB, Kernel: s.boot.kernel, Initrd: s.boot.initrd, Cmdline: s.boot.args}
	for _, d := range s.drives {
		if d.root {
			spec.Drives = append(spec.Drives, d.spec())
			mode := "rw"
			if d.readOnly {
				mode = "ro"
			}
			spec.Cmdline += " root=/dev/vda " + mode
		}
	}
	for _, d := range s.drives {
		if !d.root {
			spec.Drives = append(spec.Drives, d.spec())
		}
	}
	if err := s.machine.Boot(ctx, spec); err != nil {
		return faultf("Failed to start microVM: %v", err)
	}
	s.started = true
	return nil
}

func (d *drive) spec() DriveSpec {
	return DriveSpec{ID: d.id, File: d.file, ReadOnly: d.readOnly, BytesPerSec: d.bps, OpsPerSec: d.ops}
}

// checkKernel accepts what Firecracker boots on x86_64: an ELF64 x86-64
// executable (the vmlinux, not a bzImage).
func checkKernel(f *os.File) error {
	e, err := elf.NewFile(io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return faultf("Invalid Elf magic number (not an ELF vmlinux: %v)", err)
	}
	if e.Class != elf.ELFCLASS64 || e.Machine != elf.EM_X86_64 {
		return faultf("Invalid ELF class or machine (%v %v), want ELF64 x86-64", e.Class, e.Machine)
	}
	if e.Type != elf.ET_EXEC {
		return faultf("Invalid ELF type %v, want an executable", e.Type)
	}
	return nil
}

func (s *Server) patchVM(ctx context.Context, body []byte) error {
	var b vmBody
	if err := decode(body, &b); err != nil {
		return err
	}
	if !s.started {
		return errBeforeStart
	}
	if *b.State == "Paused" {
		if err := s.machine.Pause(ctx); err != nil {
			return faultf("Failed to pause the microVM: %v", err)
		}
		s.paused = true
		return nil
	}
	if err := s.machine.Resume(ctx); err != nil {
		return faultf("Failed to resume the microVM: %v", err)
	}
	s.paused = false
	return nil
}

func (s *Server) isStarted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

func (s *Server) allocPort() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextPort++
	return s.nextPort
}
