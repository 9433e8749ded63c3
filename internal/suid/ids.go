package suid

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"

	"github.com/hypervm/hyper/internal/config"
)

// checkVMIDs requires uid and gid to be inside the configured band, never 0,
// not the caller's, and not the id of any user in /etc/passwd or group in
// /etc/group: a VM must not be able to act as a real account. The files
// are read directly (a static binary has no NSS), as the caller, and an
// unreadable file fails closed.
func checkVMIDs(cfg *config.Config, uid, gid uint32) error {
	lo, hi := cfg.Jails.UIDMin(), cfg.Jails.UIDMax()
	for _, c := range []struct {
		what string
		id   uint32
		mine int
		db   string
	}{{"uid", uid, caller.uid, "/etc/passwd"}, {"gid", gid, caller.gid, "/etc/group"}} {
		if c.id == 0 || c.id < lo || c.id > hi {
			return refused("%s %d is outside jails.uid_gid_range [%d, %d]", c.what, c.id, lo, hi)
		}
		if int64(c.id) == int64(c.mine) {
			return refused("%s %d is the caller's own", c.what, c.id)
		}
		taken, err := idInDB(c.db, c.id)
		if err != nil {
			return refused("cannot check %s %d against %s: %v", c.what, c.id, c.db, err)
		}
		if taken != "" {
			return refused("%s %d belongs to %q in %s", c.what, c.id, taken, c.db)
		}
	}
	return nil
}

// idInDB returns the name of the entry of a passwd- or group-format file
// whose third field is id, or "".
func idInDB(path string, id uint32) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := bytes.SplitN(sc.Bytes(), []byte(":"), 4)
		if len(f) < 3 {
			continue
		}
		if n, err := strconv.ParseUint(string(bytes.TrimSpace(f[2])), 10, 32); err == nil && uint32(n) == id {
			return string(f[0]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return "", nil
}
