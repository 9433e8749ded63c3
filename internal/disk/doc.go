// Package disk makes and clones VM writable disks, without root.
//
// A VM boots on a read-only base image shared by every VM of that image and
// one writable disk of its own: a sparse file, sized to the instance type's
// disk, holding an ext4 filesystem that the guest's init stacks over the
// base as an overlay. Maker makes those disks; Cloner copies one for a fork,
// with FICLONE where the filesystem supports reflinks (no data copied) and
// otherwise a sparse copy of the data extents (proportional to what the VM
// wrote, never to the disk's size). Every disk appears complete and synced,
// or not at all.
package disk
