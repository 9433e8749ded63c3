// Package ids mints and checks the identifiers Hyper hands out.
//
// A VM id is "v" followed by 16 characters of lowercase RFC 4648 base32
// (10 random bytes). The alphabet is the intersection of what every place
// the id travels accepts: Firecracker instance ids (no "_"), jailer ids and
// device names (must not start with "-"), cgroup names and path components
// (no punctuation), hostnames. The leading letter keeps it from ever being
// read as a flag. Layer ids have the same shape with an "l". Image ids are
// sha256 digests in lowercase hex.
package ids

import (
	"crypto/rand"
	"encoding/base32"
	"strings"
)

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

const randLen = 16 // base32 characters of 10 random bytes

func mint(prefix string) string {
	var b [10]byte
	// crypto/rand.Read never fails on Linux (Go 1.24+ crashes instead).
	_, _ = rand.Read(b[:])
	return prefix + enc.EncodeToString(b[:])
}

// NewVM returns a fresh VM id.
func NewVM() string { return mint("v") }

// NewLayer returns a fresh layer id.
func NewLayer() string { return mint("l") }

// IsVM reports whether s is a well-formed VM id.
func IsVM(s string) bool { return valid(s, 'v') }

// IsLayer reports whether s is a well-formed layer id.
func IsLayer(s string) bool { return valid(s, 'l') }

func valid(s string, prefix byte) bool {
	if len(s) != 1+randLen || s[0] != prefix {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// IsImage reports whether s is a well-formed image id: 64 lowercase hex
// characters.
func IsImage(s string) bool {
	if len(s) != 64 {
		return false
	}
	return strings.Trim(s, "0123456789abcdef") == ""
}
