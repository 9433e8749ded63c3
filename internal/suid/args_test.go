package suid

import (
	"strings"
	"testing"

	"pgregory.net/rapid"
)

const (
	testVM    = "vabcdefghijklmnop"
	testImage = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

func TestParseAccepts(t *testing.T) {
	cases := []struct {
		argv string
		want Request
	}{
		{"version", Request{Op: OpVersion}},
		{"sys-test", Request{Op: OpSysTest}},
		{"jail prepare " + testVM + " 900001 900002 " + testImage + " --initrd k.cpio", Request{Op: OpJailPrepare, VM: testVM, UID: 900001, GID: 900002, Image: testImage, Initrd: "k.cpio"}},
		{"jail prepare " + testVM + " 1 1 " + testImage + " --initrd k.cpio --kernel vmlinux-6.1.0", Request{Op: OpJailPrepare, VM: testVM, UID: 1, GID: 1, Image: testImage, Kernel: "vmlinux-6.1.0", Initrd: "k.cpio"}},
		{"jail grant-api " + testVM, Request{Op: OpJailGrantAPI, VM: testVM}},
		{"jail grant-vsock " + testVM, Request{Op: OpJailGrantVsock, VM: testVM}},
		{"jail remove " + testVM, Request{Op: OpJailRemove, VM: testVM}},
		{"cgroup delegate", Request{Op: OpCgroupDelegate}},
		{"cgroup kill " + testVM, Request{Op: OpCgroupKill, VM: testVM}},
		{"cgroup remove " + testVM, Request{Op: OpCgroupRemove, VM: testVM}},
		{"cgroup list", Request{Op: OpCgroupList}},
		{"jailer " + testVM + " 900001 900001", Request{Op: OpJailer, VM: testVM, UID: 900001, GID: 900001}},
		{"jailer " + testVM + " 900001 900001 --netns hyper-" + testVM, Request{Op: OpJailer, VM: testVM, UID: 900001, GID: 900001, Netns: "hyper-" + testVM}},
	}
	for _, c := range cases {
		got, err := Parse(strings.Fields(c.argv))
		if err != nil {
			t.Errorf("Parse(%q): %v", c.argv, err)
			continue
		}
		if got != c.want {
			t.Errorf("Parse(%q) = %+v, want %+v", c.argv, got, c.want)
		}
		if again, err := Parse(got.Argv()); err != nil || again != got {
			t.Errorf("round trip of %q: %+v, %v", c.argv, again, err)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	vm, img := testVM, testImage
	cases := []struct{ argv []string }{
		{nil},
		{[]string{""}},
		{[]string{"jail"}},
		{[]string{"jail", "chmod", vm}},
		{[]string{"version", "--config", "/tmp/x"}},
		{[]string{"sys-test", "extra"}},
		{[]string{"cgroup", "list", "extra"}},
		{[]string{"jail", "remove"}},
		{[]string{"jail", "remove", "vabcdefghijklmn_p"}},
		{[]string{"jail", "remove", "vabcdefghijklmn-p"}},
		{[]string{"jail", "remove", "vABCDEFGHIJKLMNOP"}},
		{[]string{"jail", "remove", "vabcdefghijklmno"}},
		{[]string{"jail", "remove", "vabcdefghijklmnopq"}},
		{[]string{"jail", "remove", "aabcdefghijklmnop"}},
		{[]string{"jail", "remove", "vabcdefghijklmn01"}},
		{[]string{"jail", "remove", "vabcdefghijklmn89"}},
		{[]string{"jail", "remove", ".."}},
		{[]string{"jail", "remove", "v/../../../../etc"}},
		{[]string{"jail", "remove", vm + "/"}},
		{[]string{"jail", "remove", vm, vm}},
		{[]string{"jail", "prepare", vm, "0", "900001", img}},
		{[]string{"jail", "prepare", vm, "900001", "0", img}},
		{[]string{"jail", "prepare", vm, "-1", "900001", img}},
		{[]string{"jail", "prepare", vm, "+5", "900001", img}},
		{[]string{"jail", "prepare", vm, "0900001", "900001", img}},
		{[]string{"jail", "prepare", vm, "4294967295", "900001", img}},
		{[]string{"jail", "prepare", vm, "1e6", "900001", img}},
		{[]string{"jail", "prepare", vm, "900001", "900001", strings.ToUpper(img)}},
		{[]string{"jail", "prepare", vm, "900001", "900001", img[1:]}},
		{[]string{"jail", "prepare", vm, "900001", "900001", "../" + img[3:]}},
		{[]string{"jail", "prepare", vm, "900001", "900001", img, "--kernel", "../vmlinux"}},
		{[]string{"jail", "prepare", vm, "900001", "900001", img, "--kernel", "/boot/vmlinuz"}},
		{[]string{"jail", "prepare", vm, "900001", "900001", img, "--kernel", ".vmlinux"}},
		{[]string{"jail", "prepare", vm, "900001", "900001", img, "--kernel"}},
		{[]string{"jail", "prepare", vm, "900001", "900001", img, "--kernel", "a", "--kernel", "b"}},
		{[]string{"jail", "prepare", vm, "900001", "900001", img}}, // no --initrd
		{[]string{"jail", "prepare", vm, "900001", "900001", img, "--initrd", "../vms/x/initrd.img"}},
		{[]string{"jail", "prepare", vm, "900001", "900001", img, "--initrd", "/tmp/evil.cpio"}},
		{[]string{"jail", "prepare", vm, "900001", "900001", img, "--initrd", ".hidden"}},
		{[]string{"cgroup", "delegate", vm}},
		{[]string{"cgroup", "delegate", "--pid", "1"}},
		// Removed ops: hyperd makes and fills VM cgroups itself.
		{[]string{"cgroup", "create", vm, "--cpu", "1", "--mem", "1048576"}},
		{[]string{"cgroup", "attach", vm, "4242"}},
		{[]string{"jailer", vm, "900001", "900001", "--exec-file", "/bin/sh"}},
		{[]string{"jailer", vm, "900001", "900001", "--", "--api-sock", "/x"}},
		{[]string{"jailer", vm, "900001", "900001", "--netns", "foo"}},
		{[]string{"jailer", vm, "900001", "900001", "--netns", "hyper-../x"}},
		{[]string{"jailer", vm, "900001", "900001", "--netns", "hyper-" + strings.Repeat("a", 60)}},
		{[]string{"jailer", "--id", vm, "--uid", "900001", "--gid", "900001"}},
	}
	for _, c := range cases {
		if r, err := Parse(c.argv); err == nil {
			t.Errorf("Parse(%q) accepted: %+v", c.argv, r)
		}
	}
}

func TestVMIDProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		id := "v" + rapid.StringOfN(rapid.RuneFrom([]rune("abcdefghijklmnopqrstuvwxyz234567")), 16, 16, -1).Draw(t, "id")
		if !ValidVMID(id) {
			t.Fatalf("valid id %q rejected", id)
		}
		s := rapid.String().Draw(t, "s")
		if ValidVMID(s) {
			for _, c := range s[1:] {
				if !strings.ContainsRune("abcdefghijklmnopqrstuvwxyz234567", c) {
					t.Fatalf("id %q with %q accepted", s, c)
				}
			}
		}
	})
}

// requestGen draws any valid request.
var requestGen = rapid.Custom(func(t *rapid.T) Request {
	sp := rapid.SampledFrom(specs).Draw(t, "op")
	r := Request{Op: sp.op}
	vm := "v" + rapid.StringOfN(rapid.RuneFrom([]rune("abcdefghijklmnopqrstuvwxyz234567")), 16, 16, -1).Draw(t, "vm")
	name := rapid.StringMatching(`[a-z0-9][a-z0-9._-]{0,20}`)
	for _, k := range sp.pos {
		switch k {
		case kVM:
			r.VM = vm
		case kUID:
			r.UID = rapid.Uint32Range(1, 1<<32-2).Draw(t, "uid")
		case kGID:
			r.GID = rapid.Uint32Range(1, 1<<32-2).Draw(t, "gid")
		case kImage:
			r.Image = rapid.StringMatching(`[0-9a-f]{64}`).Draw(t, "image")
		}
	}
	for _, f := range sp.flags {
		if !f.required && rapid.Bool().Draw(t, "has "+f.name) {
			continue
		}
		switch f.kind {
		case kKernel:
			r.Kernel = name.Draw(t, "kernel")
		case kInitrd:
			r.Initrd = name.Draw(t, "initrd")
		case kNetns:
			r.Netns = "hyper-" + name.Draw(t, "netns")
		}
	}
	return r
})

func TestArgvRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		r := requestGen.Draw(t, "request")
		got, err := Parse(r.Argv())
		if err != nil || got != r {
			t.Fatalf("Parse(%q) = %+v, %v; want %+v", r.Argv(), got, err, r)
		}
	})
}

// FuzzParse feeds arbitrary argv (NUL-separated) to the parser: it must
// never panic, everything it accepts must render back to the same request,
// and no accepted argument may carry a path separator, a NUL, white space,
// or start with "-" unless it is one of the op's own flag names.
func FuzzParse(f *testing.F) {
	for _, sp := range specs {
		f.Add(strings.Join(Request{Op: sp.op, VM: testVM, UID: 900001, GID: 900001, Image: testImage,
			Kernel: "vmlinux", Initrd: "k.cpio", Netns: "hyper-x"}.Argv(), "\x00"))
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(strings.Split(s, "\x00"))
		if err != nil {
			return
		}
		argv := r.Argv()
		if again, err := Parse(argv); err != nil || again != r {
			t.Fatalf("accepted %q but its rendering %q parses to %+v, %v", s, argv, again, err)
		}
		for _, a := range argv {
			if strings.ContainsAny(a, "/\x00 \t\n") || strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") {
				t.Fatalf("accepted %q with argument %q", s, a)
			}
		}
	})
}
