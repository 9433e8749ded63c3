package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrNotServed means the Debian mirrors apt is configured with no longer
// serve the pinned kernel package.
var ErrNotServed = errors.New("pinned kernel package not served by the Debian mirror")

// Apt fetches Debian packages with the host's apt tools. apt verifies the
// mirror's signed index; the caller still checks the pinned sha256, so a
// mirror that changed the package under the same version is caught.
type Apt struct {
	// AptGet and AptCache default to the binaries found on PATH.
	AptGet   string
	AptCache string
}

func (a Apt) aptGet() string   { return orDefault(a.AptGet, "apt-get") }
func (a Apt) aptCache() string { return orDefault(a.AptCache, "apt-cache") }

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Download fetches pkg=version into dir and returns the .deb's path.
func (a Apt) Download(ctx context.Context, pkg, version, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, a.aptGet(), "download", "-q", pkg+"="+version)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if notServed(msg) {
			return "", fmt.Errorf("%w: %s=%s (apt-get: %s); run `apt-get update` if the package lists are stale, or `%s` to pin the version the mirror serves now",
				ErrNotServed, pkg, version, lastLine(msg), RepinTarget)
		}
		return "", fmt.Errorf("apt-get download %s=%s: %w: %s", pkg, version, err, msg)
	}
	matches, err := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if err != nil || len(matches) != 1 {
		return "", fmt.Errorf("apt-get download %s=%s: expected one .deb in %s, found %d", pkg, version, dir, len(matches))
	}
	return matches[0], nil
}

func notServed(msg string) bool {
	for _, s := range []string{"was not found", "Unable to locate package", "Can't find a source", "has no installation candidate"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// Current resolves what the mirror serves now for meta (for example
// linux-image-cloud-amd64): the versioned package it depends on, that
// package's version and the .deb's sha256 from the mirror's signed index.
//
// Among the versions offered it prefers the one from the stable point
// release (a suite without "-security" or "-updates"): the mirror keeps that
// file until the next point release, while a security upload is replaced
// within weeks and would break every pinned build when it is.
func (a Apt) Current(ctx context.Context, meta, arch string) (Pin, error) {
	out, err := a.run(ctx, "madison", meta)
	if err != nil {
		return Pin{}, err
	}
	version := pickVersion(out, arch)
	if version == "" {
		return Pin{}, fmt.Errorf("apt-cache madison %s: no version for %s (run `apt-get update`)", meta, arch)
	}
	show, err := a.run(ctx, "show", meta+"="+version)
	if err != nil {
		return Pin{}, err
	}
	pkg := versionedDependency(show["Depends"], version)
	if pkg == "" {
		return Pin{}, fmt.Errorf("apt-cache show %s=%s: no linux-image dependency pinned to %s in %q", meta, version, version, show["Depends"])
	}
	pshow, err := a.run(ctx, "show", pkg+"="+version)
	if err != nil {
		return Pin{}, err
	}
	p := Pin{
		Arch: arch, MetaPackage: meta, Package: pkg, Version: version,
		SHA256: pshow["SHA256"], Release: strings.TrimPrefix(pkg, "linux-image-"),
	}
	if err := p.validate(); err != nil {
		return Pin{}, fmt.Errorf("resolved %s=%s: %w", pkg, version, err)
	}
	return p, nil
}

// run executes apt-cache; "madison" output is returned under the key
// "madison", "show" output as its first stanza's fields.
func (a Apt) run(ctx context.Context, verb, arg string) (map[string]string, error) {
	cmd := exec.CommandContext(ctx, a.aptCache(), verb, arg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache %s %s: %w: %s", verb, arg, err, strings.TrimSpace(stderr.String()))
	}
	if verb == "madison" {
		return map[string]string{"madison": string(out)}, nil
	}
	fields := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			break
		}
		if k, v, ok := strings.Cut(line, ": "); ok && !strings.HasPrefix(line, " ") {
			fields[k] = v
		}
	}
	return fields, nil
}

// pickVersion chooses from `apt-cache madison` lines
// ("pkg | version | url suite/component arch Packages").
func pickVersion(madison map[string]string, arch string) string {
	var fallback string
	for _, line := range strings.Split(madison["madison"], "\n") {
		parts := strings.Split(line, "|")
		if len(parts) != 3 {
			continue
		}
		version := strings.TrimSpace(parts[1])
		src := strings.Fields(parts[2])
		if len(src) < 3 || src[2] != arch {
			continue
		}
		suite, _, _ := strings.Cut(src[1], "/")
		if !strings.Contains(suite, "-") {
			return version
		}
		if fallback == "" {
			fallback = version
		}
	}
	return fallback
}

// versionedDependency finds "linux-image-X (= version)" in a Depends field.
func versionedDependency(depends, version string) string {
	for _, d := range strings.Split(depends, ",") {
		name, rest, _ := strings.Cut(strings.TrimSpace(d), " ")
		if strings.HasPrefix(name, "linux-image-") && strings.TrimSpace(rest) == "(= "+version+")" {
			return name
		}
	}
	return ""
}

// extractDeb unpacks a .deb's data into dir with dpkg-deb, which every
// Debian host has (the package is xz-compressed; Go's standard library has
// no xz reader).
func extractDeb(ctx context.Context, deb, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, strings.TrimSpace(string(out)))
	}
	return nil
}
