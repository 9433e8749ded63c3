// Command bench compares loading a realistic image with Hyper's in-process
// loader against the reference pipeline (skopeo copy, umoci unpack, du,
// mke2fs -d) and against a plain copy of the same bytes. Run it with
// `make bench-image`.
//
// The image is a Debian bookworm minbase root file system made once with
// debootstrap from the mirror configured for apt, cached as a tar under
// -cache together with two OCI layouts of it: one with an uncompressed
// layer, one gzip-compressed. Every method runs -runs times, interleaved,
// and the medians of wall time and CPU time (this process and its children)
// are printed with the ratios the issue sets targets for.
package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/hypervm/hyper/internal/image"
)

func main() {
	cache := flag.String("cache", "/var/cache/hyper-bench", "directory for the cached root file system and layouts (outside the repository)")
	runs := flag.Int("runs", 5, "runs per method")
	suite := flag.String("suite", "bookworm", "Debian suite to debootstrap")
	only := flag.String("only", "", "run only the methods whose name contains this")
	flag.Parse()
	log.SetFlags(0)
	if err := run(*cache, *suite, *runs, *only); err != nil {
		log.Fatalf("bench-image: %v", err)
	}
}

func run(cache, suite string, runs int, only string) error {
	if runs < 1 {
		return fmt.Errorf("-runs %d: need at least 1", runs)
	}
	for _, tool := range []string{"skopeo", "umoci", "mke2fs", "du", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install skopeo umoci e2fsprogs): %w", tool, err)
		}
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return err
	}
	rootTar, err := ensureRootfs(cache, suite)
	if err != nil {
		return err
	}
	layouts := map[string]string{}
	for _, comp := range []string{"tar", "gzip"} {
		dir, err := ensureLayout(cache, suite, rootTar, comp)
		if err != nil {
			return err
		}
		layouts[comp] = dir
	}
	work := filepath.Join(cache, "work")
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(work)

	fi, err := os.Stat(rootTar)
	if err != nil {
		return err
	}
	fmt.Printf("image: Debian %s minbase, %d MB uncompressed tar, %d runs each, %d CPUs\n", suite, fi.Size()>>20, runs, runtime.NumCPU())

	// Each method returns the file it made, checked with e2fsck after the
	// first run when it is an ext4. Hyper and the copy run side by side so
	// that they see the same load on a shared machine.
	methods := []method{
		{"hyper (uncompressed layer)", func(dir string) (string, error) { return hyperLoad(dir, layouts["tar"]) }, true},
		{"plain copy of the tar", func(dir string) (string, error) { return plainCopy(dir, rootTar) }, false},
		{"hyper (gzip layer)", func(dir string) (string, error) { return hyperLoad(dir, layouts["gzip"]) }, true},
		{"reference (uncompressed layer)", func(dir string) (string, error) { return referenceLoad(dir, layouts["tar"]) }, true},
		{"reference (gzip layer)", func(dir string) (string, error) { return referenceLoad(dir, layouts["gzip"]) }, true},
	}
	methods = slices.DeleteFunc(methods, func(m method) bool { return !strings.Contains(m.name, only) })
	if len(methods) == 0 {
		return fmt.Errorf("-only %q matches no method", only)
	}
	times := make([][]time.Duration, len(methods))
	cpus := make([][]time.Duration, len(methods))
	sizes := make([]int64, len(methods))
	for r := range runs {
		for i, m := range methods {
			dir := filepath.Join(work, strconv.Itoa(i))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			// Start every run with no dirty pages from the previous one.
			if err := exec.Command("sync").Run(); err != nil {
				return fmt.Errorf("sync: %w", err)
			}
			cpu0 := cpuTime()
			start := time.Now()
			out, err := m.fn(dir)
			d := time.Since(start)
			cpu := cpuTime() - cpu0
			if err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			fi, err := os.Stat(out)
			if err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			times[i] = append(times[i], d)
			cpus[i] = append(cpus[i], cpu)
			sizes[i] = fi.Size()
			fmt.Printf("run %d %-32s %8.3fs wall %8.3fs cpu\n", r+1, m.name, d.Seconds(), cpu.Seconds())
			if r == 0 && m.ext4 {
				if err := command("e2fsck", "-fn", out); err != nil {
					return fmt.Errorf("%s: %w", m.name, err)
				}
			}
			if err := os.RemoveAll(dir); err != nil {
				return err
			}
		}
	}

	med := map[string]time.Duration{}
	fmt.Printf("\n%-32s %10s %10s %14s\n", "method (median)", "wall s", "cpu s", "output bytes")
	for i, m := range methods {
		slices.Sort(times[i])
		slices.Sort(cpus[i])
		med[m.name] = times[i][len(times[i])/2]
		fmt.Printf("%-32s %10.3f %10.3f %14d\n", m.name, med[m.name].Seconds(), cpus[i][len(cpus[i])/2].Seconds(), sizes[i])
	}
	ratio := func(label, a, b, target string) {
		if med[a] > 0 && med[b] > 0 {
			fmt.Printf("%-40s %6.2fx %s\n", label, med[a].Seconds()/med[b].Seconds(), target)
		}
	}
	fmt.Println()
	ratio("reference / hyper, uncompressed layer:", "reference (uncompressed layer)", "hyper (uncompressed layer)", "(target >= 3)")
	ratio("reference / hyper, gzip layer:", "reference (gzip layer)", "hyper (gzip layer)", "(target >= 3)")
	ratio("hyper / plain copy, uncompressed layer:", "hyper (uncompressed layer)", "plain copy of the tar", "(target <= 2)")
	ratio("hyper / plain copy, gzip layer:", "hyper (gzip layer)", "plain copy of the tar", "")
	return nil
}

type method struct {
	name string
	fn   func(dir string) (string, error)
	ext4 bool
}

// hyperLoad loads the layout with a fresh Loader, as the node does.
func hyperLoad(dir, layout string) (string, error) {
	l, err := image.NewLoader(image.Options{
		ImagesDir: filepath.Join(dir, "images"),
		TmpDir:    filepath.Join(dir, "tmp"),
		Arch:      hostArch(),
	})
	if err != nil {
		return "", err
	}
	img, err := l.Load(context.Background(), "oci:"+layout, nil)
	if err != nil {
		return "", err
	}
	return img.Path, nil
}

// referenceLoad is the reference's loader (spec section 5.1): skopeo copy to
// a private layout, umoci unpack, du for the size, mke2fs -d. The ingest's
// sha256 of the result is left out, which favours the reference.
func referenceLoad(dir, layout string) (string, error) {
	oci := filepath.Join(dir, "oci")
	bundle := filepath.Join(dir, "bundle")
	if err := command("skopeo", "copy", "--quiet", "oci:"+layout+":latest", "oci:"+oci+":img"); err != nil {
		return "", err
	}
	unpack := []string{"unpack", "--image", oci + ":img", bundle}
	if os.Geteuid() != 0 {
		unpack = slices.Insert(unpack, 1, "--rootless")
	}
	if err := command("umoci", unpack...); err != nil {
		return "", err
	}
	rootfs := filepath.Join(bundle, "rootfs")
	content, err := duFirst("du", "-sB1", rootfs)
	if err != nil {
		return "", err
	}
	files, err := duFirst("du", "-s", "--inodes", rootfs)
	if err != nil {
		return "", err
	}
	inodes := files + files/10 + 256
	size := content + content/4 + inodes*256 + 16<<20
	sizeMiB := (size + 1<<20 - 1) >> 20
	out := filepath.Join(dir, "image.ext4")
	if err := command("mke2fs", "-t", "ext4", "-F", "-q", "-N", strconv.FormatInt(inodes, 10), "-d", rootfs, out, strconv.FormatInt(sizeMiB, 10)+"M"); err != nil {
		return "", err
	}
	return out, nil
}

// plainCopy copies the tar to a new file and syncs it, as the loader syncs
// its disk: the physical floor for writing that many bytes.
func plainCopy(dir, src string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	name := filepath.Join(dir, "copy")
	out, err := os.Create(name)
	if err != nil {
		return "", err
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		return "", err
	}
	if err := out.Sync(); err != nil {
		return "", err
	}
	return name, out.Close()
}

// cpuTime is the CPU time used so far by this process and the children it
// has waited for: the loader runs in-process, the reference's tools as
// children. It is less disturbed than wall time by other work on the
// machine.
func cpuTime() time.Duration {
	var total time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if err := syscall.Getrusage(who, &ru); err == nil {
			total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return total
}

func command(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func duFirst(name string, args ...string) (int64, error) {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return 0, fmt.Errorf("%s: no output", name)
	}
	return strconv.ParseInt(f[0], 10, 64)
}

func hostArch() string {
	if runtime.GOARCH == "arm64" {
		return "aarch64"
	}
	return "x86_64"
}

// ensureRootfs returns the cached tar of a debootstrapped root file system,
// making it first if needed (root and network to the apt mirror).
func ensureRootfs(cache, suite string) (string, error) {
	tarPath := filepath.Join(cache, suite+"-minbase.tar")
	if _, err := os.Stat(tarPath); err == nil {
		return tarPath, nil
	}
	if os.Geteuid() != 0 {
		return "", errors.New("building the root file system with debootstrap needs root")
	}
	mirror := aptMirror()
	dir := filepath.Join(cache, suite+"-minbase.partial")
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	log.Printf("debootstrap --variant=minbase %s %s %s (once)", suite, dir, mirror)
	cmd := exec.Command("debootstrap", "--variant=minbase", suite, dir, mirror)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("debootstrap: %w", err)
	}
	partial := tarPath + ".partial"
	if err := command("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--sort=name", "-C", dir, "-cf", partial, "."); err != nil {
		return "", err
	}
	if err := os.Rename(partial, tarPath); err != nil {
		return "", err
	}
	return tarPath, os.RemoveAll(dir)
}

// aptMirror returns the first Debian mirror apt is configured with.
func aptMirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	files = append([]string{"/etc/apt/sources.list"}, files...)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			switch {
			case len(fields) >= 2 && fields[0] == "URIs:" && strings.HasSuffix(fields[1], "/debian"):
				return fields[1]
			case len(fields) >= 3 && fields[0] == "deb" && strings.HasSuffix(fields[1], "/debian"):
				return fields[1]
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// ensureLayout writes, once, an OCI layout holding the tar as one layer,
// uncompressed ("tar") or gzip-compressed ("gzip"), tagged "latest".
func ensureLayout(cache, suite, rootTar, comp string) (string, error) {
	dir := filepath.Join(cache, suite+"-minbase-oci-"+comp)
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
		return dir, nil
	}
	log.Printf("writing OCI layout %s (once)", dir)
	partial := dir + ".partial"
	if err := os.RemoveAll(partial); err != nil {
		return "", err
	}
	blobs := filepath.Join(partial, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return "", err
	}
	layer, diffID, err := writeLayerBlob(blobs, rootTar, comp)
	if err != nil {
		return "", err
	}
	cfg := v1.ConfigFile{
		Architecture: map[string]string{"amd64": "amd64", "arm64": "arm64"}[runtime.GOARCH],
		OS:           "linux",
		Config:       v1.Config{Cmd: []string{"/bin/bash"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		RootFS:       v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{diffID}},
	}
	cfgDesc, err := writeJSONBlob(blobs, types.OCIConfigJSON, cfg)
	if err != nil {
		return "", err
	}
	manifest := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: cfgDesc, Layers: []v1.Descriptor{layer}}
	mDesc, err := writeJSONBlob(blobs, types.OCIManifestSchema1, manifest)
	if err != nil {
		return "", err
	}
	mDesc.Annotations = map[string]string{"org.opencontainers.image.ref.name": "latest"}
	index := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{mDesc}}
	for name, v := range map[string]any{"index.json": index, "oci-layout": map[string]string{"imageLayoutVersion": "1.0.0"}} {
		data, err := json.Marshal(v)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(partial, name), data, 0o644); err != nil {
			return "", err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	return dir, os.Rename(partial, dir)
}

// writeLayerBlob stores the tar as a layer blob and returns its descriptor
// and diff id.
func writeLayerBlob(blobs, rootTar, comp string) (v1.Descriptor, v1.Hash, error) {
	in, err := os.Open(rootTar)
	if err != nil {
		return v1.Descriptor{}, v1.Hash{}, err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(blobs, "layer-")
	if err != nil {
		return v1.Descriptor{}, v1.Hash{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()

	blobHash, diffHash := sha256.New(), sha256.New()
	counter := &countWriter{}
	blobOut := io.MultiWriter(tmp, blobHash, counter)
	mt := types.OCIUncompressedLayer
	var w io.Writer = blobOut
	var gz *gzip.Writer
	if comp == "gzip" {
		mt = types.OCILayer
		gz = gzip.NewWriter(blobOut)
		w = gz
	}
	if _, err := io.Copy(io.MultiWriter(w, diffHash), in); err != nil {
		return v1.Descriptor{}, v1.Hash{}, err
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return v1.Descriptor{}, v1.Hash{}, err
		}
	}
	if err := tmp.Close(); err != nil {
		return v1.Descriptor{}, v1.Hash{}, err
	}
	digest := hashOf(blobHash)
	if err := os.Rename(tmp.Name(), filepath.Join(blobs, digest.Hex)); err != nil {
		return v1.Descriptor{}, v1.Hash{}, err
	}
	return v1.Descriptor{MediaType: mt, Size: counter.n, Digest: digest}, hashOf(diffHash), nil
}

func writeJSONBlob(blobs string, mt types.MediaType, v any) (v1.Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return v1.Descriptor{}, err
	}
	sum := sha256.Sum256(data)
	d := v1.Descriptor{MediaType: mt, Size: int64(len(data)), Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}}
	if err := os.WriteFile(filepath.Join(blobs, d.Digest.Hex), data, 0o644); err != nil && !errors.Is(err, fs.ErrExist) {
		return v1.Descriptor{}, err
	}
	return d, nil
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
