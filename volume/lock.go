package volume

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// volumeLock is an exclusive flock on volumes/<name>/lock: one process
// owns a volume's writable layer at a time. The kernel drops the lock when
// the process dies, so a crash never leaves a volume locked.
type volumeLock struct {
	f *os.File
}

func (m *Manager) lockVolume(name string) (*volumeLock, error) {
	return lockFile(m.lockPath(name), "volume "+name)
}

func (m *Manager) lockPath(name string) string { return filepath.Join(m.volDir(name), "lock") }

func lockFile(path, what string) (*volumeLock, error) {
	if err := mkdirAllSync(filepath.Dir(path)); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			owner := "another process"
			if unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB) == nil {
				// Only shared holders: read-only opens (sharedLockNB),
				// which do not write their PID (the file names the last
				// writer, who may be gone).
				unix.Flock(int(f.Fd()), unix.LOCK_UN)
				return nil, fmt.Errorf("%s is in use by a read-only open (an export) in another process: %w", what, ErrInUse)
			}
			if b, err := os.ReadFile(path); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					owner = fmt.Sprintf("process %d", pid)
				}
			}
			return nil, fmt.Errorf("%s is in use by %s: %w", what, owner, ErrInUse)
		}
		return nil, fmt.Errorf("lock %s: %w", what, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &volumeLock{f: f}, nil
}

func (l *volumeLock) release() {
	if l != nil && l.f != nil {
		unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		l.f.Close()
		l.f = nil
	}
}

// sharedLockNB takes a shared flock on an existing lock file, without
// waiting and without writing anything (the file is opened read-only,
// and not created): for readers that must not write (OpenReadOnly). A
// missing file needs no lock: nobody ever opened the volume for writing
// (every path that creates a volume's directory creates its lock file
// first), so it returns a lock that holds nothing. An exclusive holder
// (the volume's owner) makes it fail with ErrInUse.
func sharedLockNB(path, what string) (*volumeLock, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return &volumeLock{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", what, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			owner := "another process"
			if b, err := os.ReadFile(path); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					owner = fmt.Sprintf("process %d", pid)
				}
			}
			return nil, fmt.Errorf("%s is in use by %s: %w", what, owner, ErrInUse)
		}
		return nil, fmt.Errorf("lock %s: %w", what, err)
	}
	return &volumeLock{f: f}, nil
}
