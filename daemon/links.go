package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/obdvol/obdvol/metadata"
)

// link points the stable name <devdir>/<name> at target, atomically (a
// temporary symlink renamed over the old one), and returns its path. It
// replaces only a symlink: anything else at that path is left alone.
func (h *Host) link(name, target string) (string, error) {
	if err := metadata.ValidateName("volume", name); err != nil {
		return "", err // never a path: no '/', no leading '.'
	}
	dir := h.cfg.DevDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSymlink == 0 {
		return "", fmt.Errorf("%s exists and is not a symbolic link: left alone", path)
	}
	tmp := filepath.Join(dir, "."+name+".tmp-"+strconv.Itoa(os.Getpid()))
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return path, nil
}

// unlink removes a stable name if it still points at target.
func (h *Host) unlink(path, target string) {
	if path == "" {
		return
	}
	if t, err := os.Readlink(path); err == nil && t == target {
		os.Remove(path)
	}
}
