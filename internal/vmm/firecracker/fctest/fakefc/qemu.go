package fakefc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// AgentPort is the only guest vsock port the QEMU machine bridges: the
// guest agent's (guestcfg.AgentVsockPort), carried by the virtio-serial
// port AgentPortName.
const (
	AgentPort     = 1024
	AgentPortName = "hyper.agent"
)

// QEMU boots the guest under qemu-system-x86_64's microvm machine with TCG.
// QEMU boots Firecracker's ELF vmlinux through its PVH entry point, so the
// jail's kernel is used as is. QEMU is the stand-in's child: it dies with
// the stand-in (parent-death signal) and is killed by pid on every exit
// path.
type QEMU struct {
	bin, runDir string
	console     io.Writer
	tscKHz      int64

	cmd      *exec.Cmd
	done     chan struct{}
	exitErr  error
	qmp      *qmpConn
	portOpen atomic.Bool
	portBusy atomic.Bool
}

var _ Machine = (*QEMU)(nil)

// NewQEMU returns a machine that runs bin (qemu-system-x86_64) with its
// sockets in runDir, which must exist, and the guest's serial console on
// console (Firecracker writes it to its stdout).
func NewQEMU(bin, runDir string, console io.Writer) *QEMU {
	return &QEMU{bin: bin, runDir: runDir, console: console, done: make(chan struct{}), tscKHz: hostTSCKHz()}
}

// hostTSCKHz is the host's TSC frequency as the kernel reports it, or 0.
//
// Under Firecracker the guest times itself with kvm-clock. Under TCG,
// microvm offers the guest no clock to calibrate its TSC against (no
// HPET, no PIT gate), and the boot stalls there; telling the guest the
// TSC frequency (tsc_early_khz=, tsc=reliable) is the stand-in's way of
// giving it the clock Firecracker's guest would have. Under TCG the guest
// reads the host's TSC, so the host's frequency is the right one.
func hostTSCKHz() int64 {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || mhz <= 0 {
				return 0
			}
			return int64(mhz * 1000)
		}
	}
	return 0
}

// tcgCacheMiB caps QEMU's TCG translation cache (-accel tcg,tb-size=).
//
// The node caps a VM's memory cgroup at the guest's memory plus
// instance.VMMOverhead (64 MiB), which real Firecracker, a few MiB beside
// the guest's memory, fits in with room to spare. The stand-in and its
// QEMU live in that cgroup too, and QEMU's cache of translated guest code
// defaults to up to 1 GiB, filled as the guest runs new code: past boot
// it outgrows the overhead and the kernel OOM-kills QEMU, which looks like
// a guest that dies on its own. With 24 MiB the stand-in stays well inside
// the overhead; 16 MiB already makes the guest visibly slower (the cache
// is flushed and refilled too often).
const tcgCacheMiB = 24

// qmpTimeout bounds QEMU's start up to a working QMP socket.
const qmpTimeout = 10 * time.Second

func (q *QEMU) agentSock() string { return filepath.Join(q.runDir, "agent.sock") }
func (q *QEMU) qmpSock() string   { return filepath.Join(q.runDir, "qmp.sock") }

// Args is QEMU's command line for spec; file descriptor 3 onward are the
// kernel, the initrd and the drives, in that order.
func (q *QEMU) Args(spec BootSpec) []string {
	fd := 3
	next := func() string { p := "/proc/self/fd/" + strconv.Itoa(fd); fd++; return p }
	args := []string{q.bin,
		"-M", "microvm", "-accel", "tcg,tb-size=" + strconv.Itoa(tcgCacheMiB), "-cpu", "max",
		"-smp", strconv.Itoa(spec.VCPUs), "-m", strconv.FormatInt(spec.MemMiB, 10) + "M",
		// A guest reset ends QEMU as it ends Firecracker; a guest power-off
		// only stops QEMU, as it only halts Firecracker's vCPUs on x86
		// (see event).
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-no-shutdown",
		// Start paused: the QMP monitor is connected (and sees every
		// port event) before the guest runs.
		"-S",
		"-kernel", next(),
	}
	if spec.Initrd != nil {
		args = append(args, "-initrd", next())
	}
	cmdline := spec.Cmdline
	if q.tscKHz > 0 {
		cmdline = strings.TrimSpace(cmdline + " tsc_early_khz=" + strconv.FormatInt(q.tscKHz, 10) + " tsc=reliable")
	}
	if cmdline != "" {
		args = append(args, "-append", cmdline)
	}
	for i, d := range spec.Drives {
		id := "drive" + strconv.Itoa(i)
		opt := "id=" + id + ",if=none,format=raw,file=" + next()
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		if d.BytesPerSec > 0 {
			opt += ",throttling.bps-total=" + strconv.FormatInt(d.BytesPerSec, 10)
		}
		if d.OpsPerSec > 0 {
			opt += ",throttling.iops-total=" + strconv.FormatInt(d.OpsPerSec, 10)
		}
		args = append(args, "-drive", opt, "-device", "virtio-blk-device,drive="+id)
	}
	return append(args,
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,server=on,wait=off,path="+escape(q.agentSock()),
		"-device", "virtserialport,id=agentport,chardev=agent,name="+AgentPortName,
		"-chardev", "socket,id=qmp,server=on,wait=off,path="+escape(q.qmpSock()),
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
	)
}

func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Boot implements Machine.
func (q *QEMU) Boot(ctx context.Context, spec BootSpec) error {
	files := []*os.File{spec.Kernel}
	if spec.Initrd != nil {
		files = append(files, spec.Initrd)
	}
	for _, d := range spec.Drives {
		files = append(files, d.File)
	}
	args := q.Args(spec)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.ExtraFiles = files
	cmd.Stdout, cmd.Stderr = q.console, q.console
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}
	q.cmd = cmd
	go func() {
		q.exitErr = cmd.Wait()
		close(q.done)
	}()
	qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	qmp, err := q.connectQMP(qctx)
	if err == nil {
		q.qmp = qmp
		_, err = qmp.run(qctx, "cont")
	}
	if err != nil {
		q.Kill()
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

func (q *QEMU) connectQMP(ctx context.Context) (*qmpConn, error) {
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", q.qmpSock())
		if err == nil {
			return newQMP(ctx, c, q.event)
		}
		select {
		case <-q.done:
			return nil, fmt.Errorf("exited before its monitor came up: %v", q.exitErr)
		case <-ctx.Done():
			return nil, fmt.Errorf("monitor: %w (last: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// event follows the guest. VSERPORT_CHANGE says whether the guest has the
// agent port open: the only way to know that something in the guest
// listens, as Firecracker knows from the guest's vsock answer. SHUTDOWN
// says the guest reset or powered off: Firecracker on x86 exits on a reset
// (reboot, panic with panic=N, Ctrl+Alt+Del) but not on a power-off, which
// leaves the guest halted and Firecracker running.
func (q *QEMU) event(name string, data json.RawMessage) {
	switch name {
	case "VSERPORT_CHANGE":
		var ev struct {
			ID   string `json:"id"`
			Open bool   `json:"open"`
		}
		if json.Unmarshal(data, &ev) == nil && ev.ID == "agentport" {
			q.portOpen.Store(ev.Open)
		}
	case "SHUTDOWN":
		var ev struct {
			Reason string `json:"reason"`
		}
		if json.Unmarshal(data, &ev) == nil && ev.Reason != "guest-shutdown" {
			q.cmd.Process.Kill()
		}
	}
}

// errPortBusy refuses a second agent connection: unlike vsock, a
// virtio-serial port is one stream, and QEMU would leave a second client
// waiting unanswered until the first leaves.
var errPortBusy = errors.New("the agent port already carries a connection (virtio-serial is one stream)")

// DialPort implements Machine.
func (q *QEMU) DialPort(ctx context.Context, port uint32) (net.Conn, error) {
	if port != AgentPort || !q.portOpen.Load() {
		return nil, ErrNoListener
	}
	if !q.portBusy.CompareAndSwap(false, true) {
		return nil, errPortBusy
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", q.agentSock())
	if err != nil {
		q.portBusy.Store(false)
		return nil, err
	}
	return &portConn{Conn: c, release: func() { q.portBusy.Store(false) }}, nil
}

// portConn frees the agent port when closed.
type portConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *portConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func (q *QEMU) Pause(ctx context.Context) error  { return q.command(ctx, "stop") }
func (q *QEMU) Resume(ctx context.Context) error { return q.command(ctx, "cont") }

// CtrlAltDel implements Machine.
func (q *QEMU) CtrlAltDel(ctx context.Context) error {
	_, err := q.qmp.run(ctx, "send-key", map[string]any{"keys": []map[string]string{
		{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}}})
	return err
}

func (q *QEMU) command(ctx context.Context, name string) error {
	if q.qmp == nil {
		return errors.New("not booted")
	}
	_, err := q.qmp.run(ctx, name)
	return err
}

// Done implements Machine.
func (q *QEMU) Done() <-chan struct{} { return q.done }

// Kill kills QEMU by pid and reaps it.
func (q *QEMU) Kill() {
	if q.cmd == nil || q.cmd.Process == nil {
		return
	}
	q.cmd.Process.Kill()
	<-q.done
	if q.qmp != nil {
		q.qmp.close()
	}
}

// qmpConn is one QMP session: commands are serialised; events go to a
// callback.
type qmpConn struct {
	c       net.Conn
	mu      sync.Mutex // one command at a time
	replies chan qmpMessage
	onEvent func(string, json.RawMessage)
	readErr chan error
}

type qmpMessage struct {
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	QMP json.RawMessage `json:"QMP"`
}

func newQMP(ctx context.Context, c net.Conn, onEvent func(string, json.RawMessage)) (*qmpConn, error) {
	q := &qmpConn{c: c, replies: make(chan qmpMessage, 1), onEvent: onEvent, readErr: make(chan error, 1)}
	greeting := make(chan error, 1)
	go q.read(greeting)
	select {
	case err := <-greeting:
		if err != nil {
			c.Close()
			return nil, err
		}
	case <-ctx.Done():
		c.Close()
		return nil, ctx.Err()
	}
	if _, err := q.run(ctx, "qmp_capabilities"); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) read(greeting chan<- error) {
	sc := bufio.NewScanner(q.c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	first := true
	for sc.Scan() {
		var m qmpMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			continue
		}
		switch {
		case first && m.QMP != nil:
			first = false
			greeting <- nil
		case m.Event != "":
			q.onEvent(m.Event, m.Data)
		default:
			q.replies <- m
		}
	}
	err := sc.Err()
	if err == nil {
		err = io.EOF
	}
	if first {
		greeting <- fmt.Errorf("qmp greeting: %w", err)
	}
	q.readErr <- err
}

func (q *qmpConn) run(ctx context.Context, command string, args ...any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	req := map[string]any{"execute": command}
	if len(args) > 0 {
		req["arguments"] = args[0]
	}
	b, _ := json.Marshal(req)
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	select {
	case m := <-q.replies:
		if m.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", command, m.Error.Class, m.Error.Desc)
		}
		return m.Return, nil
	case err := <-q.readErr:
		q.readErr <- err
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

func (q *qmpConn) close() { q.c.Close() }
