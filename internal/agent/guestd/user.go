package guestd

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// identity is who a process runs as.
type identity struct {
	uid, gid uint32
	groups   []uint32 // supplementary groups
	home     string
}

// errUnknownUser marks a user or group name that the image does not know.
var errUnknownUser = errors.New("unknown user")

// resolveUser resolves an OCI image user string ("", "name", "uid",
// "name:group", "uid:gid", mixes of both) against root's /etc/passwd and
// /etc/group, the way container runtimes do: a numeric uid missing from
// passwd is still valid (gid 0, home /), a name must exist.
func resolveUser(root, spec string) (identity, error) {
	if spec == "" {
		spec = "0"
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" || (hasGroup && groupPart == "") {
		return identity{}, fmt.Errorf("user %q: want name, uid, name:group or uid:gid", spec)
	}
	users, err := readColonFile(filepath.Join(root, "etc/passwd"), 7)
	if err != nil {
		return identity{}, err
	}
	id := identity{home: "/"}
	name := ""
	if uid, ok := parseID(userPart); ok {
		id.uid = uid
		for _, u := range users {
			if u[2] == userPart {
				name = u[0]
				id.gid, _ = parseID(u[3])
				id.home = u[5]
				break
			}
		}
	} else {
		found := false
		for _, u := range users {
			if u[0] == userPart {
				uid, ok1 := parseID(u[2])
				gid, ok2 := parseID(u[3])
				if !ok1 || !ok2 {
					return identity{}, fmt.Errorf("user %q: bad uid or gid in /etc/passwd", userPart)
				}
				id.uid, id.gid, id.home, name, found = uid, gid, u[5], u[0], true
				break
			}
		}
		if !found {
			return identity{}, fmt.Errorf("user %q: %w (not in /etc/passwd)", userPart, errUnknownUser)
		}
	}
	if id.home == "" {
		id.home = "/"
	}

	groups, err := readColonFile(filepath.Join(root, "etc/group"), 4)
	if err != nil {
		return identity{}, err
	}
	if hasGroup {
		if gid, ok := parseID(groupPart); ok {
			id.gid = gid
		} else {
			found := false
			for _, g := range groups {
				if g[0] == groupPart {
					gid, ok := parseID(g[2])
					if !ok {
						return identity{}, fmt.Errorf("group %q: bad gid in /etc/group", groupPart)
					}
					id.gid, found = gid, true
					break
				}
			}
			if !found {
				return identity{}, fmt.Errorf("group %q: %w (not in /etc/group)", groupPart, errUnknownUser)
			}
		}
	}
	// Supplementary groups come from the user's memberships, plus the
	// primary group, as login(1) and container runtimes set them.
	id.groups = []uint32{id.gid}
	if name != "" {
		for _, g := range groups {
			for _, member := range strings.Split(g[3], ",") {
				if member != name {
					continue
				}
				if gid, ok := parseID(g[2]); ok && gid != id.gid {
					id.groups = append(id.groups, gid)
				}
			}
		}
	}
	return id, nil
}

func parseID(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}

// readColonFile reads a passwd-style file into rows of at least fields
// fields; short rows and comments are skipped, and a missing file is empty
// (images without /etc/passwd can still run as numeric users).
func readColonFile(path string, fields int) ([][]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	var rows [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		row := strings.Split(line, ":")
		if len(row) < fields {
			continue
		}
		rows = append(rows, row)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return rows, nil
}
