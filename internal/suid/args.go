package suid

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Op names an operation: one or two argv words.
type Op string

// The operations, exactly as they appear on the command line.
const (
	OpVersion        Op = "version"
	OpSysTest        Op = "sys-test"
	OpJailPrepare    Op = "jail prepare"
	OpJailGrantAPI   Op = "jail grant-api"
	OpJailGrantVsock Op = "jail grant-vsock"
	OpJailRemove     Op = "jail remove"
	OpCgroupCreate   Op = "cgroup create"
	OpCgroupKill     Op = "cgroup kill"
	OpCgroupRemove   Op = "cgroup remove"
	OpCgroupList     Op = "cgroup list"
	OpCgroupAttach   Op = "cgroup attach"
	OpJailer         Op = "jailer"
)

// Request is one parsed, validated invocation. The node builds its argv
// with Argv and the helper reads it back with Parse, so the two sides
// share one grammar. Range checks that need the config (uid band) or the
// system (existing users) happen later, still before any privilege.
type Request struct {
	Op       Op
	VM       string // VM id: "v" + 16 of [a-z2-7]
	UID, GID uint32
	Image    string // image id: 64 lowercase hex
	Kernel   string // optional kernel file name under kernel.dir
	MilliCPU uint64 // CPU limit in thousandths of a CPU
	Mem      uint64 // memory limit in bytes
	PID      int
	Netns    string // optional network namespace name ("hyper-...")
}

type kind int

const (
	kVM kind = iota
	kUID
	kGID
	kImage
	kKernel
	kCPU
	kMem
	kPID
	kNetns
)

type flagSpec struct {
	name     string
	kind     kind
	required bool
}

type opSpec struct {
	op    Op
	pos   []kind
	flags []flagSpec
}

var specs = []opSpec{
	{op: OpVersion},
	{op: OpSysTest},
	{op: OpJailPrepare, pos: []kind{kVM, kUID, kGID, kImage}, flags: []flagSpec{{"--kernel", kKernel, false}}},
	{op: OpJailGrantAPI, pos: []kind{kVM}},
	{op: OpJailGrantVsock, pos: []kind{kVM}},
	{op: OpJailRemove, pos: []kind{kVM}},
	{op: OpCgroupCreate, pos: []kind{kVM}, flags: []flagSpec{{"--cpu", kCPU, true}, {"--mem", kMem, true}}},
	{op: OpCgroupKill, pos: []kind{kVM}},
	{op: OpCgroupRemove, pos: []kind{kVM}},
	{op: OpCgroupList},
	{op: OpCgroupAttach, pos: []kind{kVM, kPID}},
	{op: OpJailer, pos: []kind{kVM, kUID, kGID}, flags: []flagSpec{{"--netns", kNetns, false}}},
}

var kindNames = [...]string{kVM: "vm-id", kUID: "uid", kGID: "gid", kImage: "image-id",
	kKernel: "--kernel", kCPU: "--cpu", kMem: "--mem", kPID: "pid", kNetns: "--netns"}

// Limits on numeric arguments. The CPU floor keeps the CFS quota at or
// above the kernel's 1 ms minimum with the 100 ms period used.
const (
	minMilliCPU = 10
	maxMilliCPU = 1024 * 1000
	minMem      = 1 << 20
	maxMem      = 1 << 50
	maxPID      = 1 << 22 // the kernel's PID_MAX_LIMIT
)

// Parse reads argv (without the program name). Every argument is checked
// against its grammar; anything unexpected is an error naming it.
func Parse(args []string) (Request, error) {
	var r Request
	var sp *opSpec
	for i := range specs {
		words := strings.Fields(string(specs[i].op))
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			sp, args = &specs[i], args[len(words):]
			break
		}
	}
	if sp == nil {
		return r, fmt.Errorf("unknown operation %q", strings.Join(args[:min(len(args), 2)], " "))
	}
	r.Op = sp.op
	if len(args) < len(sp.pos) {
		return r, fmt.Errorf("%s: missing %s", sp.op, kindNames[sp.pos[len(args)]])
	}
	for i, k := range sp.pos {
		if err := r.set(k, args[i]); err != nil {
			return r, fmt.Errorf("%s: %w", sp.op, err)
		}
	}
	seen := map[string]bool{}
	for rest := args[len(sp.pos):]; len(rest) > 0; rest = rest[2:] {
		i := slices.IndexFunc(sp.flags, func(f flagSpec) bool { return f.name == rest[0] })
		if i < 0 {
			return r, fmt.Errorf("%s: unexpected argument %q", sp.op, rest[0])
		}
		if seen[rest[0]] {
			return r, fmt.Errorf("%s: %s given twice", sp.op, rest[0])
		}
		if len(rest) < 2 {
			return r, fmt.Errorf("%s: %s needs a value", sp.op, rest[0])
		}
		seen[rest[0]] = true
		if err := r.set(sp.flags[i].kind, rest[1]); err != nil {
			return r, fmt.Errorf("%s: %w", sp.op, err)
		}
	}
	for _, f := range sp.flags {
		if f.required && !seen[f.name] {
			return r, fmt.Errorf("%s: missing %s", sp.op, f.name)
		}
	}
	return r, nil
}

// Argv renders r as the helper's command line (without the program name).
func (r Request) Argv() []string {
	for _, sp := range specs {
		if sp.op != r.Op {
			continue
		}
		argv := strings.Fields(string(sp.op))
		for _, k := range sp.pos {
			argv = append(argv, r.get(k))
		}
		for _, f := range sp.flags {
			if v := r.get(f.kind); v != "" {
				argv = append(argv, f.name, v)
			}
		}
		return argv
	}
	return nil
}

func (r *Request) set(k kind, s string) error {
	bad := func(want string) error { return fmt.Errorf("invalid %s %q: %s", kindNames[k], s, want) }
	switch k {
	case kVM:
		if !ValidVMID(s) {
			return bad("want v followed by 16 characters of [a-z2-7]")
		}
		r.VM = s
	case kUID, kGID:
		n, ok := parseDecimal(s, 1<<32-2)
		if !ok || n == 0 {
			return bad("want a decimal id from 1 to 4294967294")
		}
		if k == kUID {
			r.UID = uint32(n)
		} else {
			r.GID = uint32(n)
		}
	case kImage:
		if len(s) != 64 || strings.Trim(s, "0123456789abcdef") != "" {
			return bad("want 64 lowercase hex characters")
		}
		r.Image = s
	case kKernel:
		if !validName(s, 128) {
			return bad("want a file name of [A-Za-z0-9._-] starting with a letter or digit")
		}
		r.Kernel = s
	case kCPU:
		m, ok := parseMilli(s)
		if !ok || m < minMilliCPU || m > maxMilliCPU {
			return bad("want a number of CPUs from 0.01 to 1024 with at most 3 decimals")
		}
		r.MilliCPU = m
	case kMem:
		n, ok := parseDecimal(s, maxMem)
		if !ok || n < minMem {
			return bad(fmt.Sprintf("want a decimal byte count from %d to %d", minMem, uint64(maxMem)))
		}
		r.Mem = n
	case kPID:
		n, ok := parseDecimal(s, maxPID)
		if !ok || n < 2 {
			return bad("want a decimal pid above 1")
		}
		r.PID = int(n)
	case kNetns:
		if !strings.HasPrefix(s, "hyper-") || !validName(s, 64) {
			return bad("want hyper- followed by [A-Za-z0-9._-], at most 64 characters")
		}
		r.Netns = s
	}
	return nil
}

func (r Request) get(k kind) string {
	switch k {
	case kVM:
		return r.VM
	case kUID:
		return strconv.FormatUint(uint64(r.UID), 10)
	case kGID:
		return strconv.FormatUint(uint64(r.GID), 10)
	case kImage:
		return r.Image
	case kKernel:
		return r.Kernel
	case kCPU:
		return formatMilli(r.MilliCPU)
	case kMem:
		return strconv.FormatUint(r.Mem, 10)
	case kPID:
		return strconv.Itoa(r.PID)
	case kNetns:
		return r.Netns
	}
	return ""
}

// ValidVMID reports whether s is a VM id: "v" and 16 characters of the
// lowercase base32 alphabet. Such an id is safe as a Firecracker instance
// id, a cgroup name, a path component and part of a device name, and it
// can never be read as a flag.
func ValidVMID(s string) bool {
	if len(s) != 17 || s[0] != 'v' {
		return false
	}
	for _, c := range []byte(s[1:]) {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// validName accepts one path component of [A-Za-z0-9._-] that starts with
// a letter or digit (so never ".", ".." or a flag).
func validName(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen || !isAlnum(s[0]) {
		return false
	}
	for _, c := range []byte(s) {
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// parseDecimal accepts only canonical decimal numbers: digits, no sign, no
// leading zero, at most limit.
func parseDecimal(s string, limit uint64) (uint64, bool) {
	if s == "" || len(s) > 20 || (s[0] == '0' && len(s) > 1) || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil && n <= limit
}

// parseMilli reads "2", "0.5" or "1.125" as thousandths.
func parseMilli(s string) (uint64, bool) {
	whole, frac, dotted := strings.Cut(s, ".")
	if dotted && (frac == "" || len(frac) > 3 || strings.Trim(frac, "0123456789") != "") {
		return 0, false
	}
	w, ok := parseDecimal(whole, maxMilliCPU/1000)
	if !ok {
		return 0, false
	}
	f, _ := strconv.ParseUint((frac + "000")[:3], 10, 64)
	return w*1000 + f, true
}

func formatMilli(m uint64) string {
	s := strconv.FormatUint(m/1000, 10)
	if f := m % 1000; f != 0 {
		s += strings.TrimRight(fmt.Sprintf(".%03d", f), "0")
	}
	return s
}
