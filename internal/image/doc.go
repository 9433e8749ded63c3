// Package image turns OCI images into the read-only ext4 base disks VMs boot
// from (DESIGN.md, "Disks").
//
// # Sources
//
// Loader.Load takes
//
//   - a registry reference ("docker.io/library/alpine:3.19",
//     "localhost:5000/x@sha256:..."): credentials come from docker's
//     config.json, and plain HTTP is used only for loopback hosts and
//     Options.InsecureRegistries;
//   - "oci:<dir>[:<tag>]": an OCI image layout; the tag matches the
//     org.opencontainers.image.ref.name annotation in index.json;
//   - "docker-archive:<file.tar>": a `docker save` archive of one image.
//
// From an index it picks the manifest for the node's platform (linux and
// Options.Arch, "x86_64" -> amd64, "aarch64" -> arm64); when there is none,
// ErrNoPlatform lists the platforms the index has.
//
// # Build
//
// The layers are read one after the other, top layer first, straight from
// their compressed blobs (gzip, zstd or uncompressed, recognised from the
// bytes). Reading from the top makes flattening a filter: the first entry seen
// for a path is the one that survives, and entries hidden by a whiteout, an
// opaque directory or an upper entry are skipped, so every path reaches the
// file system writer exactly once and nothing is ever deleted from it.
// Hard links are held back until everything else is written, because the
// file they name usually comes later, from a lower layer (see flattener).
// The flattened tar stream goes through a buffered pipe into hcsshim's
// tar2ext4 on another goroutine (the two halves run in parallel; layer
// digests are hashed on a third), which writes the ext4 sequentially into a
// file under Options.TmpDir, keeping
// owners, modes (setuid, setgid, sticky), times, symlinks, hard links, device
// nodes, fifos and xattrs. Nothing is unpacked to a directory and no root is
// needed.
//
// The layer blobs are checked against their digests and the uncompressed
// streams against the config's diff ids as they are read; a mismatch is
// ErrCorrupt. Entries with absolute paths or "..", and entries written
// through a symlink (or through a file), are refused with ErrUnsafeEntry, which
// the API reports as INVALID_ARGUMENT: the image itself is malformed. No
// entry is ever created on the host: the only file written is the disk.
//
// # The disk
//
// tar2ext4 writes a compact file system: the content, 4 KiB blocks, and
// exactly the inodes and metadata it needs, with no free space and no
// journal, flagged read-only (RO_COMPAT_READONLY, so the kernel mounts it
// only read-only). That is the right size for a base disk: the guest mounts
// it read-only under an overlay whose upper layer is the VM's own writable
// disk, so free space on the base would never be used (the reference's
// "content + 25% + 8 MiB" sizing, spec 14.6, was for a mke2fs image that
// needed room to grow). Options.MaxSize (default 64 GiB) bounds the disk;
// a larger image fails with ErrNoSpace. After tar2ext4, the loader sets the
// padding bits at the end of each group's inode bitmap, which tar2ext4 leaves
// clear, so that `e2fsck -fn` finds nothing to fix.
//
// # Identity and placement
//
// The image id is
//
//	hex(sha256("hyper-image-ext4-v1\n" + config digest + "\n"))
//
// where the config digest is "sha256:<hex>" of the image config blob chosen
// for the platform (what docker calls the image id). The config names every
// layer by the digest of its uncompressed content (rootfs.diff_ids), which
// the loader verifies while building, and holds the architecture and the
// runtime config, so the same image gives the same id on every node, from a
// registry, a layout or an archive alike, however its layers are compressed.
// The version prefix changes whenever the bytes built for an image would.
// Because the id is known before any layer is read, loading an image whose
// disk exists reads no layer and writes nothing.
//
// The disk is built as TmpDir/hyper-image-*.ext4, synced, made read-only
// (0444) and renamed to ImagesDir/<id>.ext4. When TmpDir is on another
// file system it is first copied to ImagesDir/.<id>.ext4-*.incoming and
// renamed from there. A failed or cancelled load removes its files;
// Loader.CleanTmp, called at start, removes those of a crashed one.
// Concurrent loads of the same image by one Loader build it once.
//
// # Progress
//
// Load reports StageResolve, then StagePull events per layer (top layer
// first; Done and Total are compressed bytes of that layer, reported every
// 4 MiB), StageBuild while the file system's metadata is written and the
// disk placed, and StageDone with the disk's size.
package image
