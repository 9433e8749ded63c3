// Package guesttest gives tests a real guest kernel: the pinned Debian
// kernel, fetched once into a stable cache directory shared by test runs.
package guesttest

import (
	"context"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/guest"
)

// CacheDirEnv overrides DefaultCacheDir.
const CacheDirEnv = "HYPER_TEST_KERNEL_DIR"

// DefaultCacheDir is where tests keep the fetched kernel between runs.
const DefaultCacheDir = "/var/cache/hyper-test/kernel"

// CacheDir is the kernel cache tests use.
func CacheDir() string {
	if d := os.Getenv(CacheDirEnv); d != "" {
		return d
	}
	return DefaultCacheDir
}

var (
	once   sync.Once
	kernel *guest.Kernel
	kerr   error
)

// Kernel returns the pinned kernel, fetching it on first use. It skips the
// test when apt-get or dpkg-deb is missing (a non-Debian host).
func Kernel(t testing.TB) *guest.Kernel {
	t.Helper()
	for _, tool := range []string{"apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s to fetch the guest kernel: %v", tool, err)
		}
	}
	once.Do(func() {
		p, err := guest.NewProvider(config.Kernel{Dir: CacheDir()})
		if err != nil {
			kerr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		kernel, kerr = p.Kernel(ctx)
	})
	if kerr != nil {
		t.Fatalf("guest kernel: %v", kerr)
	}
	return kernel
}
