// Package units parses and formats the size and bandwidth strings used in
// Hyper's configuration and API ("512MiB", "4GiB", "1GiBps").
//
// The grammar is deliberately narrow: optional surrounding white space, a
// non-negative base-10 integer, optional white space, and a case-sensitive
// binary suffix. Fractions, signs, SI suffixes ("GB") and overflow are
// rejected, so a value either means exactly one number of bytes or is an
// error.
package units

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Size is a number of bytes.
type Size int64

// Bandwidth is a number of bytes per second.
type Bandwidth int64

// Common sizes.
const (
	B   Size = 1
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
	TiB Size = 1 << 40
)

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("invalid unit string")

type suffix struct {
	name string
	mult int64
}

// Largest first, so Format picks the biggest unit that divides exactly.
var sizeSuffixes = []suffix{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1},
}

var bandwidthSuffixes = []suffix{
	{"TiBps", 1 << 40}, {"GiBps", 1 << 30}, {"MiBps", 1 << 20}, {"KiBps", 1 << 10}, {"Bps", 1},
}

// ParseSize parses a size such as "4GiB", "512 MiB", "100B" or a plain byte
// count such as "4096".
func ParseSize(s string) (Size, error) {
	n, err := parse(s, sizeSuffixes, true)
	return Size(n), err
}

// ParseBandwidth parses a bandwidth such as "1GiBps" or "128 MiBps". A
// suffix is required: "1GiB" is a size, not a bandwidth.
func ParseBandwidth(s string) (Bandwidth, error) {
	n, err := parse(s, bandwidthSuffixes, false)
	return Bandwidth(n), err
}

func parse(in string, suffixes []suffix, bareOK bool) (int64, error) {
	s := strings.TrimSpace(in)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("%w %q: want a non-negative integer followed by a unit such as %s", ErrSyntax, in, suffixes[1].name)
	}
	digits, rest := s[:i], strings.TrimLeft(s[i:], " \t")
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w %q: number out of range", ErrSyntax, in)
	}
	if rest == "" {
		if bareOK {
			return n, nil
		}
		return 0, fmt.Errorf("%w %q: missing unit (for example %s)", ErrSyntax, in, suffixes[1].name)
	}
	for _, suf := range suffixes {
		if rest == suf.name {
			if n > math.MaxInt64/suf.mult {
				return 0, fmt.Errorf("%w %q: value overflows 64 bits", ErrSyntax, in)
			}
			return n * suf.mult, nil
		}
	}
	names := make([]string, len(suffixes))
	for i, suf := range suffixes {
		names[len(suffixes)-1-i] = suf.name
	}
	return 0, fmt.Errorf("%w %q: unknown unit %q (want one of %s)", ErrSyntax, in, rest, strings.Join(names, ", "))
}

func format(n int64, suffixes []suffix) string {
	for _, suf := range suffixes {
		if n != 0 && n%suf.mult == 0 {
			return strconv.FormatInt(n/suf.mult, 10) + suf.name
		}
	}
	return strconv.FormatInt(n, 10) + suffixes[len(suffixes)-1].name
}

// String formats the size with the largest unit that represents it exactly.
func (s Size) String() string { return format(int64(s), sizeSuffixes) }

// String formats the bandwidth with the largest unit that represents it exactly.
func (b Bandwidth) String() string { return format(int64(b), bandwidthSuffixes) }

// Bytes returns the size as a plain count of bytes.
func (s Size) Bytes() int64 { return int64(s) }

// MarshalText implements encoding.TextMarshaler.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler, so TOML and JSON strings
// decode straight into a Size.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (b Bandwidth) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *Bandwidth) UnmarshalText(text []byte) error {
	v, err := ParseBandwidth(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}
