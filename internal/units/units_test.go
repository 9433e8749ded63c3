package units

import (
	"errors"
	"math"
	"strconv"
	"testing"

	"pgregory.net/rapid"
)

func TestParseSize(t *testing.T) {
	good := map[string]Size{
		"0":          0,
		"100B":       100,
		"4096":       4096,
		"4KiB":       4 * KiB,
		"512MiB":     512 * MiB,
		"4GiB":       4 * GiB,
		" 4 GiB ":    4 * GiB,
		"2TiB":       2 * TiB,
		"8388607TiB": 8388607 * TiB,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := []string{"", "GiB", "4 Gigs", "4.5GiB", "nope", "-1GiB", "+1GiB", "4GB", "4gib", "1GiBps",
		"8388608TiB", "99999999999999999999", "4 GiB B"}
	for _, in := range bad {
		if got, err := ParseSize(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseSize(%q) = %d, %v; want ErrSyntax", in, got, err)
		}
	}
}

func TestParseBandwidth(t *testing.T) {
	good := map[string]Bandwidth{"100Bps": 100, "1GiBps": 1 << 30, "1 GiBps": 1 << 30, "128MiBps": 128 << 20}
	for in, want := range good {
		got, err := ParseBandwidth(in)
		if err != nil || got != want {
			t.Errorf("ParseBandwidth(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1GiB", "100", "fast", "-1Bps", "1.5GiBps", "9999999TiBps"} {
		if got, err := ParseBandwidth(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseBandwidth(%q) = %d, %v; want ErrSyntax", in, got, err)
		}
	}
}

func TestFormat(t *testing.T) {
	cases := map[Size]string{0: "0B", 1: "1B", 1023: "1023B", KiB: "1KiB", 1536 * KiB: "1536KiB", 4 * GiB: "4GiB", 3 * TiB: "3TiB"}
	for in, want := range cases {
		if got := in.String(); got != want {
			t.Errorf("Size(%d).String() = %q; want %q", int64(in), got, want)
		}
	}
	if got := Bandwidth(1 << 30).String(); got != "1GiBps" {
		t.Errorf("Bandwidth.String() = %q", got)
	}
}

func TestSizeRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := Size(rapid.Int64Range(0, math.MaxInt64).Draw(t, "bytes"))
		got, err := ParseSize(s.String())
		if err != nil || got != s {
			t.Fatalf("ParseSize(%q) = %d, %v; want %d", s.String(), got, err, s)
		}
	})
}

func TestBandwidthRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		b := Bandwidth(rapid.Int64Range(0, math.MaxInt64).Draw(t, "bps"))
		got, err := ParseBandwidth(b.String())
		if err != nil || got != b {
			t.Fatalf("ParseBandwidth(%q) = %d, %v; want %d", b.String(), got, err, b)
		}
	})
}

func TestParseScales(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.Int64Range(0, 1<<20).Draw(t, "n")
		suf := rapid.SampledFrom(sizeSuffixes).Draw(t, "suffix")
		got, err := ParseSize(strconv.FormatInt(n, 10) + suf.name)
		if err != nil || int64(got) != n*suf.mult {
			t.Fatalf("got %d, %v; want %d", got, err, n*suf.mult)
		}
	})
}

func TestUnmarshalText(t *testing.T) {
	var s Size
	if err := s.UnmarshalText([]byte("2GiB")); err != nil || s != 2*GiB {
		t.Fatalf("UnmarshalText = %d, %v", s, err)
	}
	if err := s.UnmarshalText([]byte("2GB")); err == nil {
		t.Fatal("UnmarshalText accepted 2GB")
	}
}
