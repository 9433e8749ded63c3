// Command bench measures package disk on real filesystems: `bench fork`
// times cloning writable disks (reflink on XFS, sparse copy on ext4) against
// `cp --sparse=always` of the same file, and `bench create` times making a
// writable disk with mke2fs against cloning a template. Both run on XFS and
// ext4 filesystems made on loop devices, so the media are comparable and
// known, and both need root. Run them through `make bench-fork` and
// `make bench-disk`.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/disk"
	"github.com/hypervm/hyper/internal/disk/internal/loopfs"
	"github.com/hypervm/hyper/internal/units"
)

func main() {
	n := flag.Int("n", 5, "timed runs per case")
	drop := flag.Bool("drop-caches", true, "sync and drop the page cache before every timed run")
	workDir := flag.String("dir", os.TempDir(), "where to put the loop filesystems' images")
	mke2fs := flag.String("mke2fs", config.DefaultMke2fs, "mke2fs to use")
	fsList := flag.String("fs", "xfs,ext4", "filesystems to run on (xfs: reflink; ext4: sparse copy)")
	sizeList := flag.String("sizes", "", "disk sizes (default fork: 2GiB,32GiB; create: 2GiB,32GiB,256GiB,2TiB)")
	writtenList := flag.String("written", "0,100MiB,1GiB", "fork: bytes written to the parent disk")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: bench [flags] fork|create\n")
		flag.PrintDefaults()
	}
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := &bench{n: *n, drop: *drop, mke2fs: *mke2fs}
	for _, t := range strings.Split(*fsList, ",") {
		b.types = append(b.types, loopfs.Type(t))
	}
	var err error
	if b.written, err = parseSizes(*writtenList); err != nil {
		fmt.Fprintln(os.Stderr, "bench: -written:", err)
		os.Exit(2)
	}
	body := b.fork
	defaultSizes := "2GiB,32GiB"
	switch flag.Arg(0) {
	case "fork":
	case "create":
		body, defaultSizes = b.create, "2GiB,32GiB,256GiB,2TiB"
	default:
		flag.Usage()
		os.Exit(2)
	}
	if *sizeList == "" {
		*sizeList = defaultSizes
	}
	if b.sizes, err = parseSizes(*sizeList); err != nil {
		fmt.Fprintln(os.Stderr, "bench: -sizes:", err)
		os.Exit(2)
	}
	if err := b.run(ctx, *workDir, body); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseSizes(list string) ([]units.Size, error) {
	var sizes []units.Size
	for _, f := range strings.Split(list, ",") {
		s, err := units.ParseSize(f)
		if err != nil {
			return nil, err
		}
		sizes = append(sizes, s)
	}
	return sizes, nil
}

type bench struct {
	n       int
	drop    bool
	mke2fs  string
	types   []loopfs.Type
	sizes   []units.Size
	written []units.Size
	fs      map[loopfs.Type]string // mount points
}

// run mounts the loop filesystems (XFS with reflink, ext4), runs body and
// unmounts and detaches them whatever happens, including an interrupt.
func (b *bench) run(ctx context.Context, workDir string, body func(context.Context) error) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (loop devices, mount, drop_caches)")
	}
	for _, t := range b.types {
		if why := loopfs.Unavailable(t); why != "" {
			return fmt.Errorf("%s: %s", t, why)
		}
	}
	work, err := os.MkdirTemp(workDir, "hyper-bench-disk-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(work)) }()
	b.fs = make(map[loopfs.Type]string)
	for _, t := range b.types {
		dir := filepath.Join(work, string(t))
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		lfs, err := loopfs.Mount(ctx, dir, t, 16<<30)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, lfs.Close()) }()
		b.fs[t] = lfs.Dir
	}
	return body(ctx)
}

func (b *bench) maker(ctx context.Context, dir string) (*disk.Maker, *disk.Cloner, error) {
	caps, err := disk.Probe(dir)
	if err != nil {
		return nil, nil, err
	}
	c, err := disk.NewCloner(disk.ModeAuto, caps)
	if err != nil {
		return nil, nil, err
	}
	m, err := disk.NewMaker(ctx, b.mke2fs, filepath.Join(dir, "cache"), c)
	return m, c, err
}

// sample is one timed operation.
type sample struct {
	name  string
	run   func() error // timed
	after func() error // untimed, after each run
}

// measure runs each sample n times and returns the times. It interleaves
// the samples' runs (a, b, a, b, ...) so that drift of the machine's load
// affects them alike.
func (b *bench) measure(ctx context.Context, samples []sample) ([][]time.Duration, error) {
	times := make([][]time.Duration, len(samples))
	for range b.n {
		for i, s := range samples {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			// Settle: the previous run's writes and deletes must not be
			// flushed on this run's time.
			syscall.Sync()
			if b.drop {
				if err := loopfs.DropCaches(); err != nil {
					return nil, err
				}
			}
			start := time.Now()
			if err := s.run(); err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			times[i] = append(times[i], time.Since(start))
			if err := s.after(); err != nil {
				return nil, err
			}
		}
	}
	return times, nil
}

func (b *bench) fork(ctx context.Context) error {
	sizes, writes := b.sizes, b.written
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Printf("Clone latency of a writable disk (median of %d; min..max). %s\n"+
		"Each clone, ours and cp's, ends with an fsync of the new file and its directory.\n\n", b.n, b.cacheNote())
	fmt.Fprintln(tw, "fs\tdisk\twritten\tmethod\tmedian\tmin..max\tvs cp\tallocated\t")
	type key struct {
		fs            loopfs.Type
		size, written units.Size
	}
	medians := make(map[key]time.Duration)
	worstReflink, worstRatio := time.Duration(0), 0.0
	for _, t := range b.types {
		dir := b.fs[t]
		m, c, err := b.maker(ctx, dir)
		if err != nil {
			return err
		}
		for _, size := range sizes {
			for _, w := range writes {
				src, dst := filepath.Join(dir, "parent.img"), filepath.Join(dir, "child.img")
				if err := m.Create(ctx, src, size); err != nil {
					return err
				}
				if err := scatter(ctx, src, size.Bytes(), w.Bytes()); err != nil {
					return err
				}
				var alloc int64
				times, err := b.measure(ctx, []sample{{
					name: c.Method().String(),
					run: func() error {
						_, err := c.Clone(ctx, src, dst)
						return err
					},
					after: func() error {
						var err error
						if alloc, err = disk.Allocated(dst); err != nil {
							return err
						}
						return disk.Remove(dst)
					},
				}, {
					name:  "cp",
					run:   func() error { return cpSparse(ctx, src, dst) },
					after: func() error { return disk.Remove(dst) },
				}})
				if err != nil {
					return err
				}
				if err := disk.Remove(src); err != nil {
					return err
				}
				ours, cp := median(times[0]), median(times[1])
				ratio := float64(ours) / float64(cp)
				medians[key{t, size, w}] = ours
				if c.Method() == disk.Reflink {
					worstReflink = max(worstReflink, ours)
				} else {
					worstRatio = max(worstRatio, ratio)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.2fx\t%s\t\n", t, size, w, c.Method(), ms(ours), spread(times[0]), ratio, mib(alloc))
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\t\t\n", t, size, w, "cp --sparse=always", ms(cp), spread(times[1]))
				fmt.Fprintf(os.Stderr, "bench: %s %s disk, %s written: done\n", t, size, w)
			}
		}
	}
	tw.Flush()

	fmt.Println("\nTargets:")
	fmt.Printf("  reflink <= 50ms in every case: worst median %s: %s\n", ms(worstReflink), verdict(worstReflink <= 50*time.Millisecond))
	fmt.Printf("  sparse copy <= 1.2x cp: worst median ratio %.2fx: %s\n", worstRatio, verdict(worstRatio <= 1.2))
	if len(sizes) < 2 {
		return nil
	}
	first, last := sizes[0], sizes[len(sizes)-1]
	fmt.Printf("  same time for %s and %s disks (median at %s / median at %s):\n", first, last, last, first)
	for _, t := range b.types {
		for _, w := range writes {
			fmt.Printf("    %s, %s written: %.2fx\n", t, w, float64(medians[key{t, last, w}])/float64(medians[key{t, first, w}]))
		}
	}
	return nil
}

func (b *bench) create(ctx context.Context) error {
	sizes := b.sizes
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Printf("Time to make a writable disk (median of %d; min..max). %s\n"+
		"Both end with an fsync of the new file and its directory.\n\n", b.n, b.cacheNote())
	fmt.Fprintln(tw, "fs\tdisk\tmke2fs\ttemplate clone\tclone method\tallocated\t")
	for _, t := range b.types {
		dir := b.fs[t]
		m, c, err := b.maker(ctx, dir)
		if err != nil {
			return err
		}
		for _, size := range sizes {
			tmpl, err := m.Template(ctx, size)
			if err != nil {
				return err
			}
			dst := filepath.Join(dir, "vm.img")
			remove := func() error { return disk.Remove(dst) }
			var alloc int64
			times, err := b.measure(ctx, []sample{
				{name: "mke2fs", after: remove, run: func() error { return m.Format(ctx, dst, size) }},
				{name: "template", run: func() error {
					_, err := c.Clone(ctx, tmpl, dst)
					return err
				}, after: func() error {
					var err error
					if alloc, err = disk.Allocated(dst); err != nil {
						return err
					}
					return remove()
				}},
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(tw, "%s\t%s\t%s (%s)\t%s (%s)\t%s\t%s\t\n", t, size,
				ms(median(times[0])), spread(times[0]), ms(median(times[1])), spread(times[1]), c.Method(), mib(alloc))
			fmt.Fprintf(os.Stderr, "bench: %s %s disk: done\n", t, size)
		}
	}
	return tw.Flush()
}

func (b *bench) cacheNote() string {
	if b.drop {
		return "Before every timed run, on both sides: sync, then drop the page cache (cold)."
	}
	return "Before every timed run, on both sides: sync; the page cache is not dropped (warm)."
}

// scatter writes n bytes of random data into the disk at path, in 1 MiB
// chunks at distinct random offsets, as a guest that wrote files here and
// there would, and syncs it. Chunks start on 2 MiB boundaries so that no two
// touch: every chunk is one extent whatever the disk's size, and disks of
// different sizes with the same bytes written are the same work to clone.
func scatter(ctx context.Context, path string, size, n int64) error {
	const chunk = 1 << 20
	if n/chunk > size/(2*chunk) {
		return fmt.Errorf("cannot scatter %d bytes in 1 MiB chunks with gaps over a %d byte disk", n, size)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	rng := rand.New(rand.NewChaCha8([32]byte{'h', 'y', 'p', 'e', 'r'}))
	buf := make([]byte, chunk)
	for _, slot := range rng.Perm(int(size / (2 * chunk)))[:n/chunk] {
		if err := ctx.Err(); err != nil {
			return err
		}
		for i := 0; i < len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], rng.Uint64())
		}
		if _, err := f.WriteAt(buf, int64(slot)*2*chunk); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// cpSparse is the physical reference: cp --sparse=always, then the same
// fsyncs Clone does.
func cpSparse(ctx context.Context, src, dst string) error {
	if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("cp: %w: %s", err, strings.TrimSpace(string(out)))
	}
	for _, p := range []string{dst, filepath.Dir(dst)} {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func spread(d []time.Duration) string {
	return ms(slices.Min(d)) + ".." + ms(slices.Max(d))
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

func mib(n int64) string {
	return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
