package guestinit

import (
	"strings"
)

// SplitCmdline splits a kernel command line into its arguments the way the
// kernel does: on spaces, with double quotes grouping a value that contains
// spaces (the quotes are dropped).
func SplitCmdline(s string) []string {
	var args []string
	var cur strings.Builder
	inQuote, inArg := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inArg = true
		case (r == ' ' || r == '\t' || r == '\n') && !inQuote:
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}

// ModuleParams collects the "module.param=value" arguments of a kernel
// command line per module, as the string finit_module takes. The kernel
// applies such arguments itself only to built-in code; a loadable module
// gets them from whoever loads it. Firecracker announces its virtio-mmio
// devices this way (virtio_mmio.device=4K@0xd0000000:5); QEMU's microvm
// announces them through ACPI and passes none.
//
// Module names are canonical ('-' read as '_'). Arguments after "--" belong
// to init and are ignored.
func ModuleParams(args []string) map[string]string {
	params := map[string]string{}
	for _, a := range args {
		if a == "--" {
			break
		}
		key, _, _ := strings.Cut(a, "=")
		mod, param, ok := strings.Cut(key, ".")
		if !ok || mod == "" || param == "" || strings.ContainsAny(mod, "/") {
			continue
		}
		mod = strings.ReplaceAll(mod, "-", "_")
		rest := a[len(mod)+1:]
		if strings.ContainsAny(rest, " \t") {
			// Re-quote a value the command line had quoted.
			if k, v, ok := strings.Cut(rest, "="); ok {
				rest = k + `="` + v + `"`
			}
		}
		if p := params[mod]; p != "" {
			params[mod] = p + " " + rest
		} else {
			params[mod] = rest
		}
	}
	return params
}
