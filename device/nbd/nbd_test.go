package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// memDisk is a Backend in memory (the wire tests need no volume).
type memDisk struct {
	mu      sync.Mutex
	b       []byte
	flushes int
}

func (m *memDisk) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.b[off:]), nil
}
func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.b[off:], p), nil
}
func (m *memDisk) Flush() error               { m.mu.Lock(); m.flushes++; m.mu.Unlock(); return nil }
func (m *memDisk) Discard(off, n int64) error { return m.WriteZeroes(off, n) }
func (m *memDisk) WriteZeroes(off, n int64) error {
	m.mu.Lock()
	clear(m.b[off : off+n])
	m.mu.Unlock()
	return nil
}
func (m *memDisk) Size() uint64 { return uint64(len(m.b)) }

// serveBytes runs one connection of a server over a pipe, feeding it the
// client bytes, and returns what the server wrote.
func serveBytes(t testing.TB, exports []Export, client []byte) []byte {
	s := NewServer(exports)
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sock")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	a, b := mk(fds[0]), mk(fds[1])
	done := make(chan struct{})
	go func() {
		s.handle(a)
		a.Close()
		close(done)
	}()
	var out bytes.Buffer
	rd := make(chan struct{})
	go func() { io.Copy(&out, b); close(rd) }()
	b.Write(client)
	b.CloseWrite() // EOF for the server; its replies still arrive
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server hung on client input")
	}
	<-rd
	b.Close()
	return out.Bytes()
}

func opt(code uint32, data []byte) []byte {
	b := make([]byte, 16+len(data))
	binary.BigEndian.PutUint64(b, optMagic)
	binary.BigEndian.PutUint32(b[8:], code)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	return b
}

func goOpt(name string) []byte {
	d := make([]byte, 4+len(name)+2)
	binary.BigEndian.PutUint32(d, uint32(len(name)))
	copy(d[4:], name)
	return opt(optGo, d)
}

func req(typ uint16, flags uint16, cookie, off uint64, n uint32) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint32(b, requestMagic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], n)
	return b
}

// A client can only touch the export it chose; a read-only export refuses
// writes with EPERM; out-of-range requests get errors, not crashes.
func TestExportIsolationAndErrors(t *testing.T) {
	a, b := &memDisk{b: make([]byte, 1<<20)}, &memDisk{b: make([]byte, 1<<20)}
	exports := []Export{{Name: "a", Backend: a}, {Name: "b", Backend: b, ReadOnly: true}}
	var c bytes.Buffer
	c.Write([]byte{0, 0, 0, clientFixedNew | clientNoZeroes})
	c.Write(goOpt("a"))
	w := req(cmdWrite, cmdFlagFUA, 1, 4096, 4)
	c.Write(w)
	c.Write([]byte("abcd"))
	c.Write(req(cmdRead, 0, 2, 1<<20-2, 4)) // past the end
	c.Write(req(cmdDisc, 0, 3, 0, 0))
	serveBytes(t, exports, c.Bytes())
	if string(a.b[4096:4100]) != "abcd" || a.flushes == 0 {
		t.Fatal("write with FUA to export a did not land and flush")
	}
	if !bytes.Equal(b.b, make([]byte, 1<<20)) {
		t.Fatal("export b was touched")
	}
	c.Reset()
	c.Write([]byte{0, 0, 0, clientFixedNew | clientNoZeroes})
	c.Write(goOpt("b"))
	c.Write(req(cmdWrite, 0, 1, 0, 4))
	c.Write([]byte("zzzz"))
	c.Write(req(cmdDisc, 0, 3, 0, 0))
	out := serveBytes(t, exports, c.Bytes())
	// The last 16 bytes are the simple reply to the write: error EPERM.
	r := out[len(out)-16:]
	if binary.BigEndian.Uint32(r) != simpleMagic || binary.BigEndian.Uint32(r[4:]) != errPerm {
		t.Fatalf("write to a read-only export: reply %x", r)
	}
	if !bytes.Equal(b.b, make([]byte, 1<<20)) {
		t.Fatal("read-only export was written")
	}
}

// FuzzHandshake feeds arbitrary client bytes to a connection: no panic,
// no hang, no write to any export it did not choose.
func FuzzHandshake(f *testing.F) {
	f.Add(append([]byte{0, 0, 0, 3}, goOpt("a")...))
	f.Add(append(append([]byte{0, 0, 0, 3}, goOpt("")...), req(cmdRead, 0, 1, 0, 512)...))
	f.Add(append([]byte{0, 0, 0, 1}, opt(optList, nil)...))
	f.Add(append([]byte{0, 0, 0, 3}, opt(optSetMetaCtx, []byte{0, 0, 0, 1, 'a', 0, 0, 0, 1, 0, 0, 0, 15})...))
	f.Fuzz(func(t *testing.T, b []byte) {
		other := &memDisk{b: make([]byte, 64<<10)}
		exports := []Export{{Name: "a", Backend: &memDisk{b: make([]byte, 64<<10)}}, {Name: "b", Backend: other, ReadOnly: true}}
		serveBytes(t, exports, b)
		if !bytes.Equal(other.b, make([]byte, 64<<10)) {
			t.Fatal("read-only export written")
		}
	})
}

// FuzzRequest decodes arbitrary request headers and runs them.
func FuzzRequest(f *testing.F) {
	f.Add(req(cmdRead, 0, 1, 0, 4096))
	f.Add(req(cmdBlockStatus, cmdFlagReqOne, 1, 0, 4096))
	f.Add(req(cmdWriteZeroes, cmdFlagNoHole, 1, 1<<62, 1<<31))
	f.Fuzz(func(t *testing.T, h []byte) {
		d := &memDisk{b: make([]byte, 64<<10)}
		client := append(append([]byte{0, 0, 0, 3}, goOpt("a")...), h...)
		serveBytes(t, []Export{{Name: "a", Backend: d}}, client)
	})
}

func TestServeShutdownFlushes(t *testing.T) {
	d := &memDisk{b: make([]byte, 4096)}
	s := NewServer([]Export{{Name: "a", Backend: d}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Serve(ctx, l) }()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0, 0, 0, 3})
	c.Write(goOpt("a"))
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil || d.flushes == 0 {
			t.Fatalf("Serve = %v, flushes %d", err, d.flushes)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

// fullDisk is a memDisk whose writes fail as a full file system makes a
// volume's writes fail: with an error wrapping ENOSPC (or another errno).
type fullDisk struct {
	memDisk
	err error
}

func (f *fullDisk) WriteAt(p []byte, off int64) (int, error) { return 0, f.err }
func (f *fullDisk) WriteZeroes(off, n int64) error           { return f.err }
func (f *fullDisk) Discard(off, n int64) error               { return f.err }

// A write, write-zeroes or trim that fails for lack of space is answered
// NBD_ENOSPC (qemu passes it on as ENOSPC); any other failure NBD_EIO.
func TestWriteErrorsKeepENOSPC(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want uint32
	}{
		{fmt.Errorf("volume v: journal append: %w", &os.PathError{Op: "write", Path: "journal", Err: syscall.ENOSPC}), errNoSpc},
		{fmt.Errorf("volume v: %w", syscall.EDQUOT), errNoSpc},
		{fmt.Errorf("volume v: %w", syscall.EIO), errIO},
		{errors.New("volume is closed"), errIO},
	} {
		d := &fullDisk{memDisk: memDisk{b: make([]byte, 1<<20)}, err: tc.err}
		var c bytes.Buffer
		c.Write([]byte{0, 0, 0, clientFixedNew | clientNoZeroes})
		c.Write(goOpt("a"))
		c.Write(req(cmdWrite, 0, 1, 4096, 4))
		c.Write([]byte("abcd"))
		c.Write(req(cmdWriteZeroes, 0, 2, 0, 8192))
		c.Write(req(cmdTrim, 0, 3, 0, 8192))
		c.Write(req(cmdDisc, 0, 4, 0, 0))
		out := serveBytes(t, []Export{{Name: "a", Backend: d}}, c.Bytes())
		// The last three 16-byte simple replies answer the three requests,
		// in the order they completed.
		if len(out) < 48 {
			t.Fatalf("%v: only %d bytes of replies", tc.err, len(out))
		}
		got := map[uint64]uint32{}
		for r := out[len(out)-48:]; len(r) > 0; r = r[16:] {
			if binary.BigEndian.Uint32(r) != simpleMagic {
				t.Fatalf("%v: not a simple reply: %x", tc.err, r[:16])
			}
			got[binary.BigEndian.Uint64(r[8:])] = binary.BigEndian.Uint32(r[4:])
		}
		for cookie, what := range map[uint64]string{1: "write", 2: "write-zeroes", 3: "trim"} {
			if e, ok := got[cookie]; !ok || e != tc.want {
				t.Errorf("%s failing with %v: NBD error %d (answered %v), want %d", what, tc.err, e, ok, tc.want)
			}
		}
	}
}

// slowCloseListener takes a while to finish Close (as a unix socket
// listener does when it removes its path).
type slowCloseListener struct {
	net.Listener
	mu     sync.Mutex
	once   sync.Once
	closed bool
}

func (l *slowCloseListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() {
		time.Sleep(50 * time.Millisecond)
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
	})
	return err
}

// TestServeReturnsAfterListenerClosed: whatever the listener's Close does
// has finished when Serve returns, so that a caller may listen again on
// the same unix path (the daemon does when one export of a group goes)
// without the old listener's cleanup removing the new socket.
func TestServeReturnsAfterListenerClosed(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &slowCloseListener{Listener: inner}
	s := NewServer([]Export{{Name: "a", Backend: &memDisk{b: make([]byte, 4096)}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Serve(ctx, l) }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		t.Fatal("Serve returned before its listener's Close finished")
	}
}
