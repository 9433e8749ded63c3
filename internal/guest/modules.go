package guest

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// GuestModules are the modules a guest needs, by name. Ones the kernel has
// built in are skipped; the dependencies of the others come along.
var GuestModules = []string{
	"virtio_mmio",                // the transport QEMU's microvm and Firecracker use
	"virtio_blk",                 // base and writable disks
	"ext4",                       // their filesystem (built into Debian's kernel)
	"overlay",                    // the root: base below, writable above
	"virtio_console",             // the agent's virtio-serial port under QEMU
	"vsock",                      // the agent's transport under Firecracker
	"vmw_vsock_virtio_transport", // ... and its virtio driver
	"virtio_net",                 // networking
}

// Module is a loadable kernel module inside a modules directory.
type Module struct {
	Name    string   // canonical name: '-' replaced by '_'
	Path    string   // relative to the modules directory, e.g. kernel/fs/overlayfs/overlay.ko
	Deps    []string // names of the modules it depends on
	Aliases []string // device aliases it binds, e.g. virtio:d00000002v*
}

// ResolveModules finds the modules named by want and everything they depend
// on in modulesDir (lib/modules/<release>), skipping built-in ones. The
// result is sorted by path. A module that is neither a file nor built in is
// an error naming it and the directory.
func ResolveModules(modulesDir string, want []string) ([]Module, error) {
	builtin, err := readBuiltin(modulesDir)
	if err != nil {
		return nil, err
	}
	index := map[string]string{}
	err = filepath.WalkDir(filepath.Join(modulesDir, "kernel"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), ".ko") {
			rel, _ := filepath.Rel(modulesDir, path)
			index[canonical(strings.TrimSuffix(d.Name(), ".ko"))] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index kernel modules in %s: %w", modulesDir, err)
	}
	seen := map[string]*Module{}
	var visit func(name, by string) error
	visit = func(name, by string) error {
		name = canonical(name)
		if _, ok := seen[name]; ok || builtin[name] {
			return nil
		}
		rel, ok := index[name]
		if !ok {
			if by != "" {
				return fmt.Errorf("kernel module %s (needed by %s): no %s.ko in %s and not built in", name, by, name, modulesDir)
			}
			return fmt.Errorf("kernel module %s: no %s.ko in %s and not built in", name, name, modulesDir)
		}
		deps, aliases, err := modinfo(filepath.Join(modulesDir, rel))
		if err != nil {
			return err
		}
		m := &Module{Name: name, Path: rel, Aliases: aliases}
		seen[name] = m
		for _, d := range deps {
			d = canonical(d)
			if builtin[d] {
				continue
			}
			m.Deps = append(m.Deps, d)
			if err := visit(d, name); err != nil {
				return err
			}
		}
		return nil
	}
	for _, w := range want {
		if err := visit(w, ""); err != nil {
			return nil, err
		}
	}
	mods := make([]Module, 0, len(seen))
	for _, m := range seen {
		mods = append(mods, *m)
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].Path < mods[j].Path })
	return mods, nil
}

func canonical(name string) string { return strings.ReplaceAll(name, "-", "_") }

func readBuiltin(modulesDir string) (map[string]bool, error) {
	data, err := os.ReadFile(filepath.Join(modulesDir, "modules.builtin"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("kernel modules directory %s: no modules.builtin (is it lib/modules/<release> of a kernel package?)", modulesDir)
	}
	if err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		base := filepath.Base(strings.TrimSpace(sc.Text()))
		if strings.HasSuffix(base, ".ko") {
			builtin[canonical(strings.TrimSuffix(base, ".ko"))] = true
		}
	}
	return builtin, sc.Err()
}

// modinfo reads the "depends=" and "alias=" entries of a module's .modinfo
// section, what depmod itself builds modules.dep and modules.alias from
// (Debian's package ships neither: depmod runs at install time).
func modinfo(path string) (deps, aliases []string, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil, fmt.Errorf("kernel module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, nil, fmt.Errorf("kernel module %s: .modinfo: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			deps = strings.Split(string(v), ",")
		}
		if v, ok := bytes.CutPrefix(kv, []byte("alias=")); ok && len(v) > 0 {
			aliases = append(aliases, string(v))
		}
	}
	return deps, aliases, nil
}

// ModulesAlias renders the device aliases of mods in modules.alias format
// ("alias pattern module"), which the guest's init uses to load a device
// driver only when its device is present.
func ModulesAlias(mods []Module) []byte {
	var b bytes.Buffer
	for _, m := range mods {
		for _, a := range m.Aliases {
			fmt.Fprintf(&b, "alias %s %s\n", a, m.Name)
		}
	}
	return b.Bytes()
}

// ModulesDep renders mods in modules.dep format ("path: dep-path ...").
func ModulesDep(mods []Module) []byte {
	paths := map[string]string{}
	for _, m := range mods {
		paths[m.Name] = m.Path
	}
	var b bytes.Buffer
	for _, m := range mods {
		b.WriteString(m.Path + ":")
		for _, d := range m.Deps {
			b.WriteString(" " + paths[d])
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}
