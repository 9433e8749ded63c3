package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hypervm/hyper/internal/fsync"
)

// Progress stages, in the order they are reported.
const (
	StageResolve = "resolve" // finding the manifest for the node's platform
	StagePull    = "pull"    // per layer: compressed bytes read (Done of Total)
	StageBuild   = "build"   // all layers read; writing the file system's metadata and placing it
	StageDone    = "done"    // the image is in place
)

// Progress is one progress event. Layer is the layer digest for StagePull.
type Progress struct {
	Stage       string
	Layer       string
	Done, Total int64
	Message     string
}

// Config is the part of the OCI image config a guest needs to run the
// image's command.
type Config struct {
	Entrypoint   []string
	Cmd          []string
	Env          []string
	WorkingDir   string
	User         string
	ExposedPorts []string // "80/tcp", sorted
}

// Image is a loaded image: its base disk is Path, a read-only ext4 file of
// Size bytes.
type Image struct {
	ID     string // see the package doc
	Ref    string // as given to Load
	Digest string // the manifest digest of the image chosen for the node's platform
	Arch   string // the node architecture it was loaded for ("x86_64", "aarch64")
	Path   string // <ImagesDir>/<ID>.ext4
	Size   int64
	Config Config
}

// Options configure a Loader.
type Options struct {
	// ImagesDir holds the base disks, <id>.ext4 (the layer medium's images
	// directory). Created if missing.
	ImagesDir string
	// TmpDir holds disks being built. On the same file system as ImagesDir
	// a finished disk is placed by one rename; elsewhere it is copied next
	// to its final name first. Created if missing.
	TmpDir string
	// Arch is the node's architecture: "x86_64" or "aarch64".
	Arch string
	// InsecureRegistries lists registries (host[:port], as in the
	// reference) that may be reached over plain HTTP. Loopback hosts always
	// may; no other host ever does.
	InsecureRegistries []string
	// Keychain supplies registry credentials; nil means docker's
	// config.json ($DOCKER_CONFIG, else ~/.docker/config.json).
	Keychain authn.Keychain
	// Transport is the HTTP transport to registries; nil means
	// go-containerregistry's default.
	Transport http.RoundTripper
	// MaxSize is the largest base disk Load builds; larger images fail with
	// ErrNoSpace. Zero means DefaultMaxSize.
	MaxSize int64
}

// DefaultMaxSize is the default Options.MaxSize.
const DefaultMaxSize = 64 << 30

// tmpPrefix starts the name of every file a Loader writes in TmpDir, and
// incomingSuffix marks a copy being placed into ImagesDir.
const (
	tmpPrefix      = "hyper-image-"
	incomingSuffix = ".incoming"
	// incomingMaxAge is how old a copy into ImagesDir must be before
	// CleanTmp removes it: ImagesDir may be shared by nodes, one of which
	// may be copying right now.
	incomingMaxAge = time.Hour
)

// idVersion is mixed into every image id; it changes whenever the bytes
// built for the same image would change.
const idVersion = "hyper-image-ext4-v1"

// Loader loads images into content-addressed ext4 base disks. It is safe
// for concurrent use; concurrent loads of the same image build it once.
type Loader struct {
	opts      Options
	platform  platform
	insecure  map[string]bool
	keychain  authn.Keychain
	transport http.RoundTripper

	mu       sync.Mutex
	inflight map[string]chan struct{}
}

// NewLoader checks opts and creates the directories.
func NewLoader(opts Options) (*Loader, error) {
	if opts.ImagesDir == "" {
		return nil, errors.New("image loader: ImagesDir is empty")
	}
	if opts.TmpDir == "" {
		return nil, errors.New("image loader: TmpDir is empty")
	}
	var p platform
	switch opts.Arch {
	case "x86_64":
		p = platform{os: "linux", arch: "amd64"}
	case "aarch64":
		p = platform{os: "linux", arch: "arm64", variant: "v8"}
	default:
		return nil, fmt.Errorf("image loader: Arch %q is not x86_64 or aarch64", opts.Arch)
	}
	if opts.MaxSize < 0 {
		return nil, fmt.Errorf("image loader: MaxSize %d is negative", opts.MaxSize)
	}
	if opts.MaxSize == 0 {
		opts.MaxSize = DefaultMaxSize
	}
	insecure := map[string]bool{}
	for _, r := range opts.InsecureRegistries {
		if r == "" || strings.ContainsAny(r, "/ \t") {
			return nil, fmt.Errorf("image loader: insecure registry %q is not host[:port]", r)
		}
		insecure[r] = true
	}
	if err := os.MkdirAll(opts.ImagesDir, 0o755); err != nil {
		return nil, fmt.Errorf("image loader: create images dir: %w", err)
	}
	if err := os.MkdirAll(opts.TmpDir, 0o700); err != nil {
		return nil, fmt.Errorf("image loader: create tmp dir: %w", err)
	}
	l := &Loader{
		opts:      opts,
		platform:  p,
		insecure:  insecure,
		keychain:  opts.Keychain,
		transport: opts.Transport,
		inflight:  map[string]chan struct{}{},
	}
	if l.keychain == nil {
		l.keychain = authn.DefaultKeychain
	}
	if l.transport == nil {
		l.transport = remote.DefaultTransport
	}
	return l, nil
}

// Load makes the base disk of ref for the node's platform, unless it is
// already there, and returns it. progress (may be nil) is called on the
// calling goroutine. Cancelling ctx stops the work and removes what was
// written.
func (l *Loader) Load(ctx context.Context, ref string, progress func(Progress)) (*Image, error) {
	if progress == nil {
		progress = func(Progress) {}
	}
	progress(Progress{Stage: StageResolve, Message: ref})
	r, err := l.resolve(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", ref, err)
	}
	cf, configDigest, err := readConfig(r.img)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", ref, err)
	}
	id := imageID(configDigest)
	img := &Image{
		ID:     id,
		Ref:    ref,
		Digest: r.manifest.String(),
		Arch:   l.opts.Arch,
		Path:   l.path(id),
		Config: configOf(cf),
	}

	release, err := l.acquire(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", ref, err)
	}
	defer release()

	if fi, err := os.Stat(img.Path); err == nil {
		img.Size = fi.Size()
		progress(Progress{Stage: StageDone, Done: img.Size, Total: img.Size, Message: "already present as image " + id})
		return img, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load %s: %w", ref, err)
	}

	size, err := l.build(ctx, r.img, cf, id, progress)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", ref, err)
	}
	img.Size = size
	progress(Progress{Stage: StageDone, Done: size, Total: size, Message: "loaded as image " + id})
	return img, nil
}

// readConfig fetches the image config and checks it against its digest,
// which the image id is derived from.
func readConfig(img v1.Image) (*v1.ConfigFile, v1.Hash, error) {
	name, err := img.ConfigName()
	if err != nil {
		return nil, v1.Hash{}, classifyRegistry(fmt.Errorf("config digest: %w", err))
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, v1.Hash{}, classifyRegistry(fmt.Errorf("read config %s: %w", name, err))
	}
	sum := sha256.Sum256(raw)
	if name.Algorithm != "sha256" || hex.EncodeToString(sum[:]) != name.Hex {
		return nil, v1.Hash{}, errorf(ErrCorrupt, "config has digest sha256:%x, want %s", sum, name)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("parse config %s: %w", name, err)
	}
	return cf, name, nil
}

// imageID derives the image id from the config digest; see the package doc.
func imageID(config v1.Hash) string {
	sum := sha256.Sum256([]byte(idVersion + "\n" + config.String() + "\n"))
	return hex.EncodeToString(sum[:])
}

func configOf(cf *v1.ConfigFile) Config {
	c := Config{
		Entrypoint: cf.Config.Entrypoint,
		Cmd:        cf.Config.Cmd,
		Env:        cf.Config.Env,
		WorkingDir: cf.Config.WorkingDir,
		User:       cf.Config.User,
	}
	for p := range cf.Config.ExposedPorts {
		c.ExposedPorts = append(c.ExposedPorts, p)
	}
	slices.Sort(c.ExposedPorts)
	return c
}

// acquire waits until no other Load of this Loader works on id.
func (l *Loader) acquire(ctx context.Context, id string) (release func(), err error) {
	for {
		l.mu.Lock()
		busy, ok := l.inflight[id]
		if !ok {
			done := make(chan struct{})
			l.inflight[id] = done
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.inflight, id)
				l.mu.Unlock()
				close(done)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// build writes the base disk for img under TmpDir and places it at its
// final path. It returns the disk's size.
func (l *Loader) build(ctx context.Context, img v1.Image, cf *v1.ConfigFile, id string, progress func(Progress)) (size int64, err error) {
	layers, err := img.Layers()
	if err != nil {
		return 0, classifyRegistry(fmt.Errorf("list layers: %w", err))
	}
	diffIDs := cf.RootFS.DiffIDs
	if len(diffIDs) != len(layers) {
		return 0, errorf(ErrCorrupt, "config lists %d layer diff ids for %d layers", len(diffIDs), len(layers))
	}

	tmp, err := os.CreateTemp(l.opts.TmpDir, tmpPrefix+id[:12]+"-*.ext4")
	if err != nil {
		return 0, classifyIO(fmt.Errorf("create temp file: %w", err))
	}
	name := tmp.Name()
	defer func() {
		if tmp != nil {
			tmp.Close()
		}
		if err != nil {
			os.Remove(name)
		}
	}()

	err = buildExt4(tmp, l.opts.MaxSize, func(tw *tar.Writer) error {
		return l.flatten(ctx, layers, diffIDs, tw, progress)
	})
	if err != nil {
		return 0, err
	}
	progress(Progress{Stage: StageBuild, Message: "placing base disk"})
	fi, err := tmp.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", name, err)
	}
	if err := tmp.Chmod(0o444); err != nil {
		return 0, fmt.Errorf("chmod %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		return 0, classifyIO(fmt.Errorf("sync %s: %w", name, err))
	}
	err = tmp.Close()
	tmp = nil
	if err != nil {
		return 0, classifyIO(fmt.Errorf("close %s: %w", name, err))
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := l.place(name, id); err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// flatten streams the layers, top first, through a flattener into tw.
func (l *Loader) flatten(ctx context.Context, layers []v1.Layer, diffIDs []v1.Hash, tw *tar.Writer, progress func(Progress)) error {
	f := newFlattener(tw)
	for i := len(layers) - 1; i >= 0; i-- {
		f.startLayer(i)
		lr := &layerReader{layer: layers[i], index: i, diffID: diffIDs[i], progress: progress}
		if err := lr.each(ctx, f.add); err != nil {
			return err
		}
	}
	progress(Progress{Stage: StageBuild, Message: "writing file system metadata"})
	for i := range layers {
		want := f.rereadWanted(i)
		if len(want) == 0 {
			continue
		}
		lr := &layerReader{layer: layers[i], index: i, diffID: diffIDs[i], progress: progress}
		err := lr.each(ctx, func(h *tar.Header, body io.Reader) error {
			if h.Typeflag == tar.TypeDir || h.Typeflag == tar.TypeLink {
				return nil
			}
			name, err := cleanName(h.Name)
			if err != nil {
				return err
			}
			dsts, ok := want[name]
			if !ok {
				return nil
			}
			delete(want, name)
			return f.addReread(dsts, h, body)
		})
		if err != nil {
			return err
		}
		for src := range want {
			return fmt.Errorf("layer %d: hard link target %q vanished on second read", i, src)
		}
	}
	return f.finish()
}

// place moves a finished disk to ImagesDir/<id>.ext4 atomically: by rename,
// or across file systems by a copy next to the final name and a rename.
func (l *Loader) place(tmp, id string) error {
	final := l.path(id)
	err := os.Rename(tmp, final)
	if errors.Is(err, syscall.EXDEV) {
		err = copyInto(tmp, final)
	}
	if err != nil {
		return classifyIO(fmt.Errorf("place image %s: %w", id, err))
	}
	return fsync.Dir(l.opts.ImagesDir)
}

// copyInto copies src to a temporary name beside dst, then renames it to
// dst.
func copyInto(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+"-*"+incomingSuffix)
	if err != nil {
		return err
	}
	defer func() {
		out.Close()
		if err != nil {
			os.Remove(out.Name())
		}
	}()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	if err := out.Chmod(0o444); err != nil {
		return err
	}
	if err := out.Sync(); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Rename(out.Name(), dst); err != nil {
		return err
	}
	return os.Remove(src)
}

func (l *Loader) path(id string) string {
	return filepath.Join(l.opts.ImagesDir, id+".ext4")
}

// validID reports whether id looks like an image id (64 lowercase hex
// digits), so that it can name nothing but a file in ImagesDir.
func validID(id string) bool {
	if len(id) != 64 {
		return false
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Path returns the base disk of image id, or ErrNotFound.
func (l *Loader) Path(id string) (string, error) {
	if !validID(id) {
		return "", errorf(ErrInvalidReference, "image id %q is not 64 lowercase hex digits", id)
	}
	p := l.path(id)
	if _, err := os.Stat(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", errorf(ErrNotFound, "image %s: no base disk", id)
		}
		return "", fmt.Errorf("image %s: %w", id, err)
	}
	return p, nil
}

// Remove deletes the base disk of image id. The caller makes sure no VM or
// layer uses it.
func (l *Loader) Remove(id string) error {
	if !validID(id) {
		return errorf(ErrInvalidReference, "image id %q is not 64 lowercase hex digits", id)
	}
	if err := os.Remove(l.path(id)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errorf(ErrNotFound, "image %s: no base disk", id)
		}
		return fmt.Errorf("remove image %s: %w", id, err)
	}
	return fsync.Dir(l.opts.ImagesDir)
}

// CleanTmp removes what interrupted loads left: every build file in TmpDir
// (call it at start, before any Load), and copies into ImagesDir older than
// an hour.
func (l *Loader) CleanTmp() error {
	var errs []error
	entries, err := os.ReadDir(l.opts.TmpDir)
	if err != nil {
		return fmt.Errorf("clean %s: %w", l.opts.TmpDir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := os.Remove(filepath.Join(l.opts.TmpDir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	entries, err = os.ReadDir(l.opts.ImagesDir)
	if err != nil {
		return fmt.Errorf("clean %s: %w", l.opts.ImagesDir, err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") || !strings.HasSuffix(e.Name(), incomingSuffix) {
			continue
		}
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < incomingMaxAge {
			continue
		}
		if err := os.Remove(filepath.Join(l.opts.ImagesDir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
