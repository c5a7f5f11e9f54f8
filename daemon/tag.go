package daemon

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// rootIDFile holds the root's random identity, made once: the tags of
// its ublk devices derive from it.
const rootIDFile = "root.id"

// rootID returns root's identity (32 hex digits), creating it the first
// time (temp file, fsync, rename, directory fsync). The caller holds the
// daemon lock, so no two processes create it at once.
func rootID(root string) (string, error) {
	path := filepath.Join(root, rootIDFile)
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if len(id) != 32 {
			return "", fmt.Errorf("%s: not a root identity (%d characters): remove it to make a new one", path, len(id))
		}
		if _, err := hex.DecodeString(id); err != nil {
			return "", fmt.Errorf("%s: not a root identity: %v", path, err)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(r[:])
	tmp, err := os.CreateTemp(root, ".root.id-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(id + "\n"); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	d, err := os.Open(root)
	if err != nil {
		return "", err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return "", err
	}
	return id, nil
}

// ublkTag is the tag of volume name's ublk devices under the root whose
// identity is id: never zero, different for every (root, volume) but for
// a 2^-64 chance. ublk.Recover refuses a device with another tag, so a
// device id freed and taken by another root's device (or another volume's
// of this root) in the same boot is never reattached to this volume.
func ublkTag(id, name string) uint64 {
	h := sha256.Sum256([]byte(id + "\x00" + name))
	if t := binary.BigEndian.Uint64(h[:8]); t != 0 {
		return t
	}
	return 1
}
