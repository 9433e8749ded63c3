package guest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// ExtractVmlinux writes the ELF kernel carried inside the x86 bzImage at
// vmlinuz to dst. Firecracker boots only ELF kernels, and Debian ships only
// the bzImage; the kernel's own extract-vmlinux script does the same with
// external decompressors, this needs none.
func ExtractVmlinux(vmlinuz, dst string) error {
	img, err := os.ReadFile(vmlinuz)
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	out, err := vmlinuxFromBzImage(img)
	if err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", vmlinuz, err)
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	return os.Rename(tmp, dst)
}

// Offsets in the x86 boot protocol's setup header
// (Documentation/arch/x86/boot.rst).
const (
	offSetupSects    = 0x1f1
	offHeaderMagic   = 0x202
	offPayloadOffset = 0x248
	offPayloadLength = 0x24c
)

func vmlinuxFromBzImage(img []byte) ([]byte, error) {
	if len(img) < offPayloadLength+4 || string(img[offHeaderMagic:offHeaderMagic+4]) != "HdrS" {
		return nil, errors.New("not an x86 bzImage (no HdrS setup header)")
	}
	setupSects := int(img[offSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	pm := (setupSects + 1) * 512
	off := int(binary.LittleEndian.Uint32(img[offPayloadOffset:]))
	n := int(binary.LittleEndian.Uint32(img[offPayloadLength:]))
	if pm+off+n > len(img) || n < 8 {
		return nil, fmt.Errorf("payload [%d, +%d) outside the %d-byte image", pm+off, n, len(img))
	}
	payload := img[pm+off : pm+off+n]
	var out []byte
	var err error
	switch {
	case bytes.HasPrefix(payload, lz4LegacyMagic):
		out, err = decodeLZ4Legacy(payload)
	case bytes.HasPrefix(payload, []byte("\x7fELF")):
		out = payload
	default:
		return nil, fmt.Errorf("payload compressed with an unsupported method (magic % x); supported: lz4, none", payload[:4])
	}
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(out))
	if err != nil {
		return nil, fmt.Errorf("decompressed payload is not an ELF kernel: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("decompressed kernel is for %s, not x86-64", f.Machine)
	}
	return out, nil
}

var lz4LegacyMagic = []byte{0x02, 0x21, 0x4c, 0x18}

// decodeLZ4Legacy decodes the LZ4 "legacy" frame the kernel build uses
// (lz4 -l): a magic, then blocks each preceded by its compressed size, each
// decompressing to at most 8 MiB. The kernel's build appends the
// uncompressed size as a 4-byte trailer, which is checked.
func decodeLZ4Legacy(in []byte) ([]byte, error) {
	const maxBlock = 8 << 20
	rest := in[len(lz4LegacyMagic):]
	var out []byte
	if hint := binary.LittleEndian.Uint32(in[len(in)-4:]); hint < 1<<30 {
		out = make([]byte, 0, hint)
	}
	for len(rest) > 0 {
		if len(rest) == 4 {
			if want := binary.LittleEndian.Uint32(rest); int(want) != len(out) {
				return nil, fmt.Errorf("lz4: decompressed %d bytes, trailer says %d", len(out), want)
			}
			break
		}
		if len(rest) < 4 {
			return nil, errors.New("lz4: truncated block header")
		}
		size := int(binary.LittleEndian.Uint32(rest))
		rest = rest[4:]
		if size > len(rest) {
			return nil, fmt.Errorf("lz4: block of %d bytes, only %d left", size, len(rest))
		}
		var err error
		if out, err = decodeLZ4Block(out, rest[:size], maxBlock); err != nil {
			return nil, err
		}
		rest = rest[size:]
	}
	return out, nil
}

// decodeLZ4Block appends the decoded LZ4 block src to dst. Matches may refer
// only to bytes of the same block (the legacy frame has independent blocks).
func decodeLZ4Block(dst, src []byte, limit int) ([]byte, error) {
	start := len(dst)
	i := 0
	readLen := func(n int) (int, error) {
		if n != 15 {
			return n, nil
		}
		for {
			if i >= len(src) {
				return 0, errors.New("lz4: truncated length")
			}
			b := src[i]
			i++
			n += int(b)
			if b != 255 {
				return n, nil
			}
		}
	}
	for i < len(src) {
		token := src[i]
		i++
		lit, err := readLen(int(token >> 4))
		if err != nil {
			return nil, err
		}
		if i+lit > len(src) {
			return nil, errors.New("lz4: literals run past the block")
		}
		dst = append(dst, src[i:i+lit]...)
		i += lit
		if i == len(src) {
			break
		}
		if i+2 > len(src) {
			return nil, errors.New("lz4: truncated match offset")
		}
		offset := int(src[i]) | int(src[i+1])<<8
		i += 2
		ml, err := readLen(int(token & 15))
		if err != nil {
			return nil, err
		}
		ml += 4
		from := len(dst) - offset
		if offset == 0 || from < start {
			return nil, fmt.Errorf("lz4: match offset %d out of range", offset)
		}
		if len(dst)-start+ml > limit {
			return nil, errors.New("lz4: block decompresses past its limit")
		}
		for k := 0; k < ml; k++ {
			dst = append(dst, dst[from+k])
		}
	}
	if len(dst)-start > limit {
		return nil, errors.New("lz4: block decompresses past its limit")
	}
	return dst, nil
}
