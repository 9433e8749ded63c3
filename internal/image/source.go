package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"unicode"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Reference prefixes for local sources; anything else is a registry
// reference.
const (
	ociPrefix           = "oci:"
	dockerArchivePrefix = "docker-archive:"
	refNameAnnotation   = "org.opencontainers.image.ref.name"
)

// resolved is the image chosen for the node's platform.
type resolved struct {
	img      v1.Image
	manifest v1.Hash // digest of the image manifest (not of an index)
}

// platform is the node's OCI platform.
type platform struct{ os, arch, variant string }

func (p platform) String() string {
	s := p.os + "/" + p.arch
	if p.variant != "" {
		s += "/" + p.variant
	}
	return s
}

// matches reports whether an image built for q runs on the node. arm64
// images are often labelled with the implicit variant v8.
func (p platform) matches(q platform) bool {
	if q.os != p.os || q.arch != p.arch {
		return false
	}
	return q.variant == "" || q.variant == p.variant || (p.arch == "arm64" && q.variant == "v8")
}

// validateRef rejects references that cannot name anything.
func validateRef(ref string) error {
	if ref == "" {
		return errorf(ErrInvalidReference, "image reference is empty")
	}
	if i := strings.IndexFunc(ref, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }); i >= 0 {
		return errorf(ErrInvalidReference, "image reference %q contains whitespace or a control character at byte %d", ref, i)
	}
	return nil
}

// resolve finds the image ref names for the node's platform.
func (l *Loader) resolve(ctx context.Context, ref string) (*resolved, error) {
	if err := validateRef(ref); err != nil {
		return nil, err
	}
	switch {
	case strings.HasPrefix(ref, ociPrefix):
		return l.resolveLayout(strings.TrimPrefix(ref, ociPrefix))
	case strings.HasPrefix(ref, dockerArchivePrefix):
		return l.resolveArchive(strings.TrimPrefix(ref, dockerArchivePrefix))
	default:
		return l.resolveRegistry(ctx, ref)
	}
}

// resolveLayout reads an OCI image layout, "<dir>" or "<dir>:<tag>". A
// directory whose own name contains a colon is taken whole when it exists.
func (l *Loader) resolveLayout(spec string) (*resolved, error) {
	dir, tag := spec, ""
	if _, err := os.Stat(spec); err != nil {
		if i := strings.LastIndexByte(spec, ':'); i >= 0 && !strings.Contains(spec[i+1:], "/") {
			dir, tag = spec[:i], spec[i+1:]
		}
	}
	if dir == "" {
		return nil, errorf(ErrInvalidReference, "oci reference %q: directory is empty", ociPrefix+spec)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errorf(ErrNotFound, "no OCI image layout at %s: %w", dir, err)
		}
		return nil, fmt.Errorf("read OCI image layout %s: %w", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("read OCI image layout %s: %w", dir, err)
	}
	if tag != "" {
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("read %s/index.json: %w", dir, err)
		}
		var tagged []v1.Descriptor
		for _, d := range im.Manifests {
			if d.Annotations[refNameAnnotation] == tag {
				tagged = append(tagged, d)
			}
		}
		if len(tagged) == 0 {
			return nil, errorf(ErrNotFound, "OCI image layout %s has no manifest tagged %q", dir, tag)
		}
		return l.pick(idx, tagged, "OCI image layout "+spec)
	}
	return l.pickIndex(idx, "OCI image layout "+spec)
}

// resolveArchive reads a `docker save` tarball holding one image.
func (l *Loader) resolveArchive(path string) (*resolved, error) {
	if path == "" {
		return nil, errorf(ErrInvalidReference, "docker-archive reference has no file")
	}
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errorf(ErrNotFound, "docker archive %s: %w", path, err)
		}
		return nil, fmt.Errorf("docker archive %s: %w", path, err)
	}
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		return nil, fmt.Errorf("read docker archive %s: %w", path, err)
	}
	return l.checkImage(img, "docker archive "+path)
}

// resolveRegistry fetches a manifest or index from a registry.
func (l *Loader) resolveRegistry(ctx context.Context, ref string) (*resolved, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, withKind(ErrInvalidReference, fmt.Errorf("parse image reference %q: %w", ref, err))
	}
	if l.insecure[r.Context().RegistryStr()] {
		r, err = name.ParseReference(ref, name.Insecure)
		if err != nil {
			return nil, withKind(ErrInvalidReference, fmt.Errorf("parse image reference %q: %w", ref, err))
		}
	}
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(l.keychain),
		remote.WithTransport(&schemeGuard{next: l.transport, insecure: l.insecure}),
	}
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return nil, classifyRegistry(fmt.Errorf("fetch manifest of %s: %w", r, err))
	}
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, classifyRegistry(fmt.Errorf("read index of %s: %w", r, err))
		}
		return l.pickIndex(idx, r.String())
	case desc.MediaType.IsImage():
		img, err := desc.Image()
		if err != nil {
			return nil, classifyRegistry(fmt.Errorf("read manifest of %s: %w", r, err))
		}
		return l.checkImage(img, r.String())
	default:
		return nil, fmt.Errorf("%s: unsupported manifest media type %q", r, desc.MediaType)
	}
}

// pickIndex chooses the node's platform among all manifests of idx.
func (l *Loader) pickIndex(idx v1.ImageIndex, what string) (*resolved, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, classifyRegistry(fmt.Errorf("%s: read index: %w", what, err))
	}
	return l.pick(idx, im.Manifests, what)
}

// pick chooses the image for the node's platform among descs (children of
// idx), descending into nested indexes. Without a match the error lists
// every platform seen.
func (l *Loader) pick(idx v1.ImageIndex, descs []v1.Descriptor, what string) (*resolved, error) {
	var seen []string
	var walk func(idx v1.ImageIndex, descs []v1.Descriptor, depth int) (*resolved, error)
	walk = func(idx v1.ImageIndex, descs []v1.Descriptor, depth int) (*resolved, error) {
		if depth > 4 {
			return nil, fmt.Errorf("%s: indexes nested too deeply", what)
		}
		for _, d := range descs {
			switch {
			case d.MediaType.IsIndex():
				child, err := idx.ImageIndex(d.Digest)
				if err != nil {
					return nil, classifyRegistry(fmt.Errorf("%s: read index %s: %w", what, d.Digest, err))
				}
				cm, err := child.IndexManifest()
				if err != nil {
					return nil, classifyRegistry(fmt.Errorf("%s: read index %s: %w", what, d.Digest, err))
				}
				if r, err := walk(child, cm.Manifests, depth+1); r != nil || err != nil {
					return r, err
				}
			case d.MediaType.IsImage() || d.MediaType == "":
				var p platform
				if d.Platform != nil {
					p = platform{d.Platform.OS, d.Platform.Architecture, d.Platform.Variant}
				} else {
					img, err := idx.Image(d.Digest)
					if err != nil {
						return nil, classifyRegistry(fmt.Errorf("%s: read manifest %s: %w", what, d.Digest, err))
					}
					if p, err = imagePlatform(img); err != nil {
						return nil, fmt.Errorf("%s: manifest %s: %w", what, d.Digest, err)
					}
				}
				// Build attestations ride along in indexes as unknown/unknown.
				if p.os == "unknown" {
					continue
				}
				if !l.platform.matches(p) {
					seen = append(seen, p.String())
					continue
				}
				img, err := idx.Image(d.Digest)
				if err != nil {
					return nil, classifyRegistry(fmt.Errorf("%s: read manifest %s: %w", what, d.Digest, err))
				}
				return &resolved{img: img, manifest: d.Digest}, nil
			}
		}
		return nil, nil
	}
	r, err := walk(idx, descs, 0)
	if err != nil || r != nil {
		return r, err
	}
	slices.Sort(seen)
	seen = slices.Compact(seen)
	if len(seen) == 0 {
		return nil, errorf(ErrNotFound, "%s holds no image manifest", what)
	}
	return nil, errorf(ErrNoPlatform, "%s has no image for %s; available platforms: %s", what, l.platform, strings.Join(seen, ", "))
}

// checkImage accepts a single-platform image if it runs on the node.
func (l *Loader) checkImage(img v1.Image, what string) (*resolved, error) {
	mt, err := img.MediaType()
	if err != nil {
		return nil, classifyRegistry(fmt.Errorf("%s: read manifest: %w", what, err))
	}
	if mt == types.DockerManifestSchema1 || mt == types.DockerManifestSchema1Signed {
		return nil, fmt.Errorf("%s: docker schema 1 manifests are not supported", what)
	}
	p, err := imagePlatform(img)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// An image that does not say what it is built for is taken at its word.
	if p.arch != "" && !l.platform.matches(p) {
		return nil, errorf(ErrNoPlatform, "%s has no image for %s; available platforms: %s", what, l.platform, p)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("%s: manifest digest: %w", what, err)
	}
	return &resolved{img: img, manifest: digest}, nil
}

func imagePlatform(img v1.Image) (platform, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return platform{}, classifyRegistry(fmt.Errorf("read image config: %w", err))
	}
	os := cf.OS
	if os == "" && cf.Architecture != "" {
		os = "linux"
	}
	return platform{os, cf.Architecture, cf.Variant}, nil
}

// schemeGuard refuses plain HTTP except to loopback hosts and the configured
// insecure registries. go-containerregistry also falls back to HTTP for
// private (RFC 1918) addresses, which would let anyone on the path between
// the node and such a registry swap the image.
type schemeGuard struct {
	next     http.RoundTripper
	insecure map[string]bool
}

func (g *schemeGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.insecure[req.URL.Host] && !isLoopbackHost(req.URL.Hostname()) {
		return nil, fmt.Errorf("refusing plain HTTP to %s: not a loopback address and not in the insecure registries", req.URL.Host)
	}
	return g.next.RoundTrip(req)
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
