package image

import (
	"archive/tar"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
	"golang.org/x/sys/unix"
)

// buildExt4 writes the ext4 file system for the tar stream that produce
// writes, into f. produce runs on the calling goroutine while tar2ext4
// consumes the stream on another; whichever fails first stops the other.
func buildExt4(f *os.File, maxSize int64, produce func(*tar.Writer) error) error {
	pipe := newBufferedPipe(pipeChunks, pipeChunkSize)
	done := make(chan error, 1)
	go func() {
		err := tar2ext4.ConvertTarToExt4(pipe, &writebackFile{File: f, fd: int(f.Fd())}, tar2ext4.MaximumDiskSize(maxSize))
		if err == nil {
			err = errConverterDone
		}
		// Unblocks the producer if the converter stopped early.
		pipe.closeRead(err)
		done <- err
	}()

	tw := tar.NewWriter(pipe)
	perr := produce(tw)
	if perr == nil {
		perr = tw.Close()
	}
	pipe.closeWrite(perr)
	cerr := <-done
	if errors.Is(cerr, errConverterDone) {
		cerr = nil
	}
	switch {
	case perr != nil && !errors.Is(perr, errConverterDone):
		// Either the root cause, or the converter's error as the pipe
		// returned it, with the entry being written for context.
		return classifyBuild(perr)
	case cerr != nil:
		return classifyBuild(fmt.Errorf("write ext4: %w", cerr))
	}
	if err := fixInodeBitmapPadding(f); err != nil {
		return classifyIO(fmt.Errorf("finish ext4: %w", err))
	}
	return nil
}

// The pipe between flattener and ext4 writer holds up to 4 MiB.
const (
	pipeChunks    = 16
	pipeChunkSize = 256 << 10
)

// writebackFile starts the kernel writing the disk back while it is being
// built (sync_file_range), so that the fsync before placing it has little
// left to wait for. It is only a hint: errors are ignored, and the fsync
// still guarantees durability.
type writebackFile struct {
	*os.File
	fd           int
	pos, flushed int64
}

const writebackStep = 16 << 20

func (w *writebackFile) Write(p []byte) (int, error) {
	n, err := w.File.Write(p)
	w.pos += int64(n)
	if w.pos-w.flushed >= writebackStep && w.pos > w.flushed {
		_ = unix.SyncFileRange(w.fd, w.flushed, w.pos-w.flushed, unix.SYNC_FILE_RANGE_WRITE)
		w.flushed = w.pos
	}
	return n, err
}

func (w *writebackFile) Seek(offset int64, whence int) (int64, error) {
	pos, err := w.File.Seek(offset, whence)
	if err == nil {
		w.pos = pos
		if pos < w.flushed {
			w.flushed = pos
		}
	}
	return pos, err
}

// errConverterDone tells a producer still writing that the converter has
// returned.
var errConverterDone = errors.New("ext4 writer finished early")

// classifyBuild maps a full disk, and tar2ext4's size limit (an unexported
// error type, known only by its message), to ErrNoSpace.
func classifyBuild(err error) error {
	if strings.Contains(err.Error(), "exceeded maximum size") {
		return withKind(ErrNoSpace, fmt.Errorf("image is larger than the maximum base disk size: %w", err))
	}
	return classifyIO(err)
}

// ext4 on-disk layout used by fixInodeBitmapPadding (see the kernel's
// Documentation/filesystems/ext4): the superblock sits at byte 1024 and the
// group descriptor table in the block after it.
const (
	sbOffset           = 1024
	sbInodesCount      = 0x00
	sbLogBlockSize     = 0x18
	sbInodesPerGroup   = 0x28
	sbMagic            = 0x38
	ext4Magic          = 0xEF53
	gdSize             = 32 // tar2ext4 writes 32-byte descriptors (no 64bit feature)
	gdInodeBitmapLow   = 0x04
	tar2ext4BlockShift = 2 // log2(block size) - 10
)

// fixInodeBitmapPadding sets the bits past the last inode of each group in
// the inode bitmaps. Such bits stand for inodes that do not exist, and
// e2fsck insists they read as in use ("Padding at end of inode bitmap is not
// set"); tar2ext4 leaves them clear when a group holds fewer inodes than its
// bitmap block has bits. Without metadata checksums in these file systems,
// nothing else depends on the bitmap bytes.
func fixInodeBitmapPadding(f *os.File) error {
	var sb [1024]byte
	if _, err := f.ReadAt(sb[:], sbOffset); err != nil {
		return fmt.Errorf("read superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[sbMagic:]) != ext4Magic {
		return errors.New("no ext4 superblock")
	}
	logBlock := le.Uint32(sb[sbLogBlockSize:])
	if logBlock != tar2ext4BlockShift {
		return fmt.Errorf("unexpected block size 2^%d", 10+logBlock)
	}
	blockSize := int64(1024) << logBlock
	inodes := le.Uint32(sb[sbInodesCount:])
	perGroup := le.Uint32(sb[sbInodesPerGroup:])
	bits := uint32(blockSize * 8)
	if perGroup == 0 || perGroup > bits || inodes%perGroup != 0 {
		return fmt.Errorf("unexpected inode geometry: %d inodes, %d per group", inodes, perGroup)
	}
	if perGroup == bits {
		return nil
	}
	groups := inodes / perGroup
	gdt := make([]byte, int64(groups)*gdSize)
	if _, err := f.ReadAt(gdt, blockSize); err != nil {
		return fmt.Errorf("read group descriptors: %w", err)
	}
	bitmap := make([]byte, blockSize)
	for g := range groups {
		at := int64(le.Uint32(gdt[int64(g)*gdSize+gdInodeBitmapLow:])) * blockSize
		if _, err := f.ReadAt(bitmap, at); err != nil {
			return fmt.Errorf("read inode bitmap of group %d: %w", g, err)
		}
		for i := perGroup; i < bits; i++ {
			if i%8 == 0 && i+8 <= bits {
				bitmap[i/8] = 0xff
				i += 7
				continue
			}
			bitmap[i/8] |= 1 << (i % 8)
		}
		if _, err := f.WriteAt(bitmap, at); err != nil {
			return fmt.Errorf("write inode bitmap of group %d: %w", g, err)
		}
	}
	return nil
}
