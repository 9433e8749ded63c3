package fakefc

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Args is the stand-in's command line: Firecracker's, as the jailer
// passes it.
type Args struct {
	APISock string
	ID      string
	Version bool
}

// instanceID is the rule Firecracker and its jailer apply to --id.
var instanceID = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

type argSpec struct {
	value   bool   // takes a value
	check   string // "int", "id", "level", "path"
	unmoded bool   // Firecracker has it, the stand-in does not emulate it
}

var argSpecs = map[string]argSpec{
	"api-sock":                  {value: true, check: "path"},
	"id":                        {value: true, check: "id"},
	"start-time-us":             {value: true, check: "int"},
	"start-time-cpu-us":         {value: true, check: "int"},
	"parent-cpu-time-us":        {value: true, check: "int"},
	"level":                     {value: true, check: "level"},
	"show-level":                {},
	"show-log-origin":           {},
	"boot-timer":                {},
	"no-seccomp":                {},
	"version":                   {},
	"config-file":               {value: true, unmoded: true},
	"no-api":                    {unmoded: true},
	"log-path":                  {value: true, unmoded: true},
	"metrics-path":              {value: true, unmoded: true},
	"module":                    {value: true, unmoded: true},
	"seccomp-filter":            {value: true, unmoded: true},
	"http-api-max-payload-size": {value: true, unmoded: true},
	"mmds-size-limit":           {value: true, unmoded: true},
	"describe-snapshot":         {value: true, unmoded: true},
	"snapshot-version":          {unmoded: true},
	"enable-pci":                {unmoded: true},
}

var levels = []string{"error", "warning", "info", "debug", "trace", "off"}

// ParseArgs checks argv (without the program name) as Firecracker does:
// only its flags, each at most once, "--flag value" or "--flag=value",
// values of the right form.
func ParseArgs(argv []string) (Args, error) {
	a := Args{APISock: "/run/firecracker.socket", ID: "anonymous-instance"}
	seen := map[string]bool{}
	for i := 0; i < len(argv); i++ {
		arg := argv[i]
		name, val, hasVal := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
		if !strings.HasPrefix(arg, "--") || name == "" {
			return a, faultf("Arguments parsing error: Found argument '%s' which wasn't expected, or isn't valid in this context.", arg)
		}
		spec, ok := argSpecs[name]
		if !ok {
			return a, faultf("Arguments parsing error: Found argument '--%s' which wasn't expected, or isn't valid in this context.", name)
		}
		if spec.unmoded {
			return a, faultf("Arguments parsing error: '--%s' is a Firecracker argument the stand-in does not emulate.", name)
		}
		if seen[name] {
			return a, faultf("Arguments parsing error: The argument '--%s' was provided more than once.", name)
		}
		seen[name] = true
		if !spec.value {
			if hasVal {
				return a, faultf("Arguments parsing error: '--%s' takes no value.", name)
			}
			if name == "version" {
				a.Version = true
			}
			continue
		}
		if !hasVal {
			if i+1 >= len(argv) || strings.HasPrefix(argv[i+1], "--") {
				return a, faultf("Arguments parsing error: The argument '--%s' requires a value but none was supplied.", name)
			}
			i++
			val = argv[i]
		}
		switch spec.check {
		case "int":
			if _, err := strconv.ParseUint(val, 10, 64); err != nil {
				return a, faultf("Arguments parsing error: '--%s' must be an unsigned integer, got %q.", name, val)
			}
		case "id":
			if !instanceID.MatchString(val) {
				return a, faultf("Invalid instance ID: %q: 1 to 64 characters, alphanumeric or '-'.", val)
			}
			a.ID = val
		case "level":
			if !slices.Contains(levels, strings.ToLower(val)) {
				return a, faultf("Arguments parsing error: invalid --level %q.", val)
			}
		case "path":
			if val == "" || strings.ContainsRune(val, 0) {
				return a, faultf("Arguments parsing error: invalid --%s %q.", name, val)
			}
			a.APISock = val
		}
	}
	return a, nil
}
