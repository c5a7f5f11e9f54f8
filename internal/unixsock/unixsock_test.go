package unixsock

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// The socket has mode 0600 even under umask 000, and Close removes it.
func TestListenModeUnderUmaskZero(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("connect to the new socket: %v", err)
	}
	c.Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left the socket: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 0 {
		t.Errorf("Listen left files beside the socket: %v", ents)
	}
}

// Anything but a socket is refused and left as it was.
func TestListenRefusesNonSockets(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, sub, link} {
		if l, err := Listen(p); !errors.Is(err, ErrNotSocket) {
			if l != nil {
				l.Close()
			}
			t.Errorf("Listen(%s) = %v, want ErrNotSocket", p, err)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Errorf("the regular file now holds %q, %v", b, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link is gone: %v", err)
	}
	if fi, err := os.Stat(sub); err != nil || !fi.IsDir() {
		t.Errorf("the directory is gone: %v", err)
	}
}

// A live socket is refused (and keeps working); a stale one is replaced.
func TestListenLiveAndStale(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	live, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := Listen(path); !errors.Is(err, ErrInUse) {
		if l != nil {
			l.Close()
		}
		t.Fatalf("second Listen = %v, want ErrInUse", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the first server's socket no longer answers: %v", err)
	}
	c.Close()
	live.Close()

	// A stale socket: bound, then its listener gone without removing it.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("precondition: want a stale socket at %s: %v", path, err)
	}
	l, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()
	c, err = net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// Of many processes racing for one stale path, exactly one wins and the
// winner's socket stays in place.
func TestListenRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	const n = 8
	var wg sync.WaitGroup
	ls := make([]net.Listener, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ls[i], errs[i] = Listen(path)
		}()
	}
	wg.Wait()
	won := 0
	for i := range n {
		if errs[i] == nil {
			won++
			defer ls[i].Close()
		} else if !errors.Is(errs[i], ErrInUse) {
			t.Errorf("loser %d: %v, want ErrInUse", i, errs[i])
		}
	}
	if won != 1 {
		t.Fatalf("%d winners, want 1", won)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the winner's socket does not answer: %v", err)
	}
	c.Close()
}
