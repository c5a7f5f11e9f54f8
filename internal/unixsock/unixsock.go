// Package unixsock creates listening unix sockets safely: it never
// replaces anything but a stale socket, never takes over a socket another
// process still answers on, and creates the socket with mode 0600
// whatever the process's umask.
//
// Glossary:
//   - live socket: a socket file a process accepts connections on (a
//     connect succeeds);
//   - stale socket: a socket file nobody listens on any more (a connect
//     is refused), left by a process that died;
//   - socket lock: an flock on the socket's directory, held by Listen
//     from its check of the old path until the new socket is in place, so
//     that two obdvol processes racing for one path cannot remove each
//     other's fresh socket.
//
// Invariants:
//   - Listen removes a path only if it is a stale socket, and only the
//     inode it probed;
//   - the socket is bound in a private 0700 directory, chmodded to 0600
//     there and only then linked to its path, so no other user can
//     connect to it at any moment; link(2) fails if the path was taken
//     meanwhile, so nothing is replaced;
//   - Close removes the path only while it is still the socket Listen
//     created.
package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mode is the permission of every socket Listen creates: only the owner
// (the user obdvol runs as) may connect.
const Mode os.FileMode = 0o600

// Errors callers can test with errors.Is.
var (
	// ErrInUse: a process answers on the path already.
	ErrInUse = errors.New("socket is in use by another process")
	// ErrNotSocket: the path exists and is not a socket.
	ErrNotSocket = errors.New("path exists and is not a socket")
)

// probeTimeout bounds the connect that tells a live socket from a stale
// one. A live server accepts (or queues) a connect at once.
const probeTimeout = 2 * time.Second

// lockTimeout bounds the wait for the socket lock.
const lockTimeout = 5 * time.Second

// Listen listens on the unix socket path, which must not exist or be a
// stale socket. It fails with an error wrapping ErrNotSocket when path is
// anything else (a regular file, a directory, a link), and with ErrInUse
// when a process answers on it. The socket has mode 0600. Closing the
// listener removes the socket.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	defer unlock()
	if err := removeStale(path); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".s")
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	defer os.RemoveAll(tmp)
	// MkdirTemp creates 0700 under any umask that leaves the owner's
	// bits (a umask of 0700 or more would make it useless anyway).
	if err := os.Chmod(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	tmpSock := filepath.Join(tmp, "s")
	l, err := net.Listen("unix", tmpSock)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // its name moves; Close removes the final one
	fail := func(err error) (net.Listener, error) {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := os.Chmod(tmpSock, Mode); err != nil {
		return fail(err)
	}
	if err := os.Link(tmpSock, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			// Taken since removeStale by something that does not take
			// the directory lock: never replace it.
			return fail(fmt.Errorf("%w: created meanwhile", ErrInUse))
		}
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != Mode {
		os.Remove(path)
		return fail(fmt.Errorf("created with mode %v, want a socket with mode %v", fi.Mode(), Mode))
	}
	return &listener{UnixListener: ul, path: path, fi: fi}, nil
}

// RemoveStale removes path if it is a stale socket (a dead server's), under
// the socket lock; it does nothing if path does not exist and fails for
// anything else (ErrInUse for a live socket, ErrNotSocket for a file).
func RemoveStale(path string) error {
	unlock, err := lockDir(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	defer unlock()
	return removeStale(path)
}

// removeStale removes path if it is a stale socket; it does nothing if
// path does not exist and fails for anything else.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("socket %s: %w (it is %s): refusing to replace it", path, ErrNotSocket, describe(fi.Mode()))
	}
	c, err := net.DialTimeout("unix", path, probeTimeout)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("socket %s: %w: stop that server or choose another path", path, ErrInUse)
	case errors.Is(err, syscall.ECONNREFUSED):
		// Stale: nobody listens.
	case errors.Is(err, syscall.ENOENT):
		return nil
	default:
		// EACCES (another user's socket), a full backlog (EAGAIN), a
		// timeout: it may be live; do not touch it.
		return fmt.Errorf("socket %s: cannot tell whether it is in use (%v): refusing to replace it", path, err)
	}
	now, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if !os.SameFile(fi, now) {
		return fmt.Errorf("socket %s: %w: replaced while checking it", path, ErrInUse)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("socket %s: removing the stale socket: %w", path, err)
	}
	return nil
}

func describe(m os.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "a " + m.Type().String() + " file"
}

// lockDir takes the socket lock of dir. A directory that cannot be opened
// for reading (mode -wx) cannot be locked; Listen then goes on without
// the lock: link(2) still never replaces a socket, only two processes
// probing one stale socket at the same moment can then remove the
// other's fresh one.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrPermission) {
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	// Held for milliseconds by Listen; anyone may flock a directory he
	// can read (another user, on /tmp), so wait a bounded time.
	deadline := time.Now().Add(lockTimeout)
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the flock
		}
		if (err != unix.EWOULDBLOCK && err != unix.EINTR) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", dir, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// listener removes its socket file on Close, if the path still names it.
type listener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
	once sync.Once
}

// Addr is the socket's path (the listener was bound under a temporary
// name; connections it accepts still report that one as local address).
func (l *listener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if now, serr := os.Lstat(l.path); serr == nil && os.SameFile(l.fi, now) {
			os.Remove(l.path)
		}
	})
	return err
}
