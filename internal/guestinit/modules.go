package guestinit

import (
	"bufio"
	"bytes"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
)

// LoadOrder reads a modules.dep file and returns every module it lists,
// as paths relative to the modules directory, ordered so each module comes
// after all the modules it depends on. Ties are broken by path so the order
// is stable. A dependency that has no line of its own, or a cycle, is an
// error: loading would fail halfway through.
func LoadOrder(modulesDep []byte) ([]string, error) {
	deps := map[string][]string{}
	var all []string
	sc := bufio.NewScanner(bytes.NewReader(modulesDep))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		if !ok || mod == "" {
			return nil, fmt.Errorf("modules.dep line %d: want \"module.ko: deps...\", got %q", line, text)
		}
		if _, dup := deps[mod]; dup {
			return nil, fmt.Errorf("modules.dep line %d: %s listed twice", line, mod)
		}
		deps[mod] = strings.Fields(rest)
		all = append(all, mod)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.Strings(all)

	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var order []string
	var visit func(mod string, chain []string) error
	visit = func(mod string, chain []string) error {
		switch state[mod] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("modules.dep: dependency cycle %s -> %s", strings.Join(chain, " -> "), mod)
		}
		d, ok := deps[mod]
		if !ok {
			return fmt.Errorf("modules.dep: %s needs %s, which it does not list", chain[len(chain)-1], mod)
		}
		state[mod] = visiting
		sorted := append([]string(nil), d...)
		sort.Strings(sorted)
		for _, dep := range sorted {
			if err := visit(dep, append(chain, mod)); err != nil {
				return err
			}
		}
		state[mod] = done
		order = append(order, mod)
		return nil
	}
	for _, mod := range all {
		if err := visit(mod, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// ModuleName is the canonical name of the module at a modules.dep path
// ("kernel/drivers/virtio/virtio_mmio.ko" -> "virtio_mmio").
func ModuleName(p string) string {
	base := path.Base(p)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		base = strings.TrimSuffix(base, ext)
	}
	return strings.ReplaceAll(strings.TrimSuffix(base, ".ko"), "-", "_")
}

// Modules is the initramfs's set of kernel modules: what modules.dep and
// modules.alias say about them.
type Modules struct {
	order   []string            // every module, in load order
	deps    map[string][]string // module -> the modules it needs
	drivers map[string][]uint32 // module -> virtio device IDs it drives
}

// ParseModules reads a modules.dep and a modules.alias file (which may be
// empty: every module then counts as core).
func ParseModules(modulesDep, modulesAlias []byte) (*Modules, error) {
	order, err := LoadOrder(modulesDep)
	if err != nil {
		return nil, err
	}
	m := &Modules{order: order, deps: map[string][]string{}, drivers: map[string][]uint32{}}
	byName := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(modulesDep))
	for sc.Scan() {
		mod, rest, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if ok {
			m.deps[mod] = strings.Fields(rest)
			byName[ModuleName(mod)] = mod
		}
	}
	sc = bufio.NewScanner(bytes.NewReader(modulesAlias))
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 3 || f[0] != "alias" {
			return nil, fmt.Errorf("modules.alias line %d: want \"alias pattern module\", got %q", line, sc.Text())
		}
		id, ok := virtioDeviceID(f[1])
		if !ok {
			continue
		}
		if p, ok := byName[strings.ReplaceAll(f[2], "-", "_")]; ok {
			m.drivers[p] = append(m.drivers[p], id)
		}
	}
	return m, sc.Err()
}

// virtioDeviceID reads the device ID of a virtio alias ("virtio:d00000002v*").
func virtioDeviceID(alias string) (uint32, bool) {
	rest, ok := strings.CutPrefix(alias, "virtio:d")
	if !ok || len(rest) < 8 {
		return 0, false
	}
	id, err := strconv.ParseUint(rest[:8], 16, 32)
	if err != nil {
		return 0, false
	}
	return uint32(id), true
}

// Core is what to load before looking at the devices, in load order: the
// modules no other module needs that drive no virtio device (the virtio
// transport, filesystems), and their dependencies.
func (m *Modules) Core() []string {
	needed := map[string]bool{}
	for _, deps := range m.deps {
		for _, d := range deps {
			needed[d] = true
		}
	}
	var roots []string
	for _, mod := range m.order {
		if !needed[mod] && len(m.drivers[mod]) == 0 {
			roots = append(roots, mod)
		}
	}
	return m.closure(roots, nil)
}

// Drivers is what to load, in load order, for the virtio devices present
// (by device ID), leaving out what is already loaded: a driver module only
// when its device exists, as udev would, so a VM without a network or vsock
// device pays nothing for their drivers.
func (m *Modules) Drivers(present []uint32, loaded []string) []string {
	have := map[uint32]bool{}
	for _, id := range present {
		have[id] = true
	}
	var roots []string
	for _, mod := range m.order {
		for _, id := range m.drivers[mod] {
			if have[id] {
				roots = append(roots, mod)
				break
			}
		}
	}
	done := map[string]bool{}
	for _, l := range loaded {
		done[l] = true
	}
	return m.closure(roots, done)
}

// closure returns roots and everything they need, minus skip, in load
// order.
func (m *Modules) closure(roots []string, skip map[string]bool) []string {
	want := map[string]bool{}
	var visit func(string)
	visit = func(mod string) {
		if want[mod] {
			return
		}
		want[mod] = true
		for _, d := range m.deps[mod] {
			visit(d)
		}
	}
	for _, r := range roots {
		visit(r)
	}
	var out []string
	for _, mod := range m.order {
		if want[mod] && !skip[mod] {
			out = append(out, mod)
		}
	}
	return out
}
