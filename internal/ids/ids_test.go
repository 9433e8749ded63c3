package ids

import (
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func TestNewVMIsValid(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		id := NewVM()
		if !IsVM(id) || len(id) != 17 || id[0] != 'v' {
			t.Fatalf("NewVM() = %q is not a valid VM id", id)
		}
		if IsLayer(id) {
			t.Fatalf("VM id %q accepted as a layer id", id)
		}
	})
}

func TestNewLayerIsValid(t *testing.T) {
	id := NewLayer()
	if !IsLayer(id) || IsVM(id) {
		t.Fatalf("NewLayer() = %q", id)
	}
}

func TestIsVMRejects(t *testing.T) {
	for _, s := range []string{
		"", "v", "vabcdefghijklmnop2", "vabcdefghijklmno", "Vabcdefghijklmnop",
		"vabcdefghijklmno1", "vabcdefghijklmno8", "vabcdefghijklmn_p", "vabcdefghijklmn-p",
		"vABCDEFGHIJKLMNOP", "-abcdefghijklmnop", "v../../../../etc", "vabcdefghijklmno ",
		"labcdefghijklmnop",
	} {
		if IsVM(s) {
			t.Errorf("IsVM(%q) = true", s)
		}
	}
}

func TestIsVMAcceptsOnlyAlphabet(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		// Mostly valid characters with a sprinkling of near misses.
		alphabet := rapid.SampledFrom([]rune("vlabcdefghijklmnopqrstuvwxyz23456701890V_-./ "))
		s := string(rapid.SliceOfN(alphabet, 15, 18).Draw(t, "s"))
		want := len(s) == 17 && s[0] == 'v' && strings.Trim(s[1:], "abcdefghijklmnopqrstuvwxyz234567") == ""
		if IsVM(s) != want {
			t.Fatalf("IsVM(%q) = %v; want %v", s, !want, want)
		}
	})
}

func TestIsImage(t *testing.T) {
	good := strings.Repeat("ab12", 16)
	if !IsImage(good) {
		t.Fatal("valid image id rejected")
	}
	for _, s := range []string{"", good[:63], good + "0", strings.ToUpper(good), "sha256:" + good[7:], strings.Repeat("g", 64)} {
		if IsImage(s) {
			t.Errorf("IsImage(%q) = true", s)
		}
	}
}
