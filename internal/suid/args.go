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
	OpCgroupDelegate Op = "cgroup delegate"
	OpCgroupKill     Op = "cgroup kill"
	OpCgroupRemove   Op = "cgroup remove"
	OpCgroupList     Op = "cgroup list"
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
	Initrd   string // initramfs file name under <kernel.dir>/initramfs
	Netns    string // optional network namespace name ("hyper-...")
}

type kind int

const (
	kVM kind = iota
	kUID
	kGID
	kImage
	kKernel
	kInitrd
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
	{op: OpJailPrepare, pos: []kind{kVM, kUID, kGID, kImage}, flags: []flagSpec{{"--kernel", kKernel, false}, {"--initrd", kInitrd, true}}},
	{op: OpJailGrantAPI, pos: []kind{kVM}},
	{op: OpJailGrantVsock, pos: []kind{kVM}},
	{op: OpJailRemove, pos: []kind{kVM}},
	{op: OpCgroupDelegate},
	{op: OpCgroupKill, pos: []kind{kVM}},
	{op: OpCgroupRemove, pos: []kind{kVM}},
	{op: OpCgroupList},
	{op: OpJailer, pos: []kind{kVM, kUID, kGID}, flags: []flagSpec{{"--netns", kNetns, false}}},
}

var kindNames = [...]string{kVM: "vm-id", kUID: "uid", kGID: "gid", kImage: "image-id",
	kKernel: "--kernel", kInitrd: "--initrd", kNetns: "--netns"}

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
	case kInitrd:
		if !validName(s, 128) {
			return bad("want a file name of [A-Za-z0-9._-] starting with a letter or digit")
		}
		r.Initrd = s
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
	case kInitrd:
		return r.Initrd
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
