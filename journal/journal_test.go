package journal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func rec(start, count uint64, st uint8) Record { return Record{Start: start, Count: count, State: st} }

func encode(recs ...Record) []byte {
	b := EncodeHeader(4096)
	r := make([]byte, RecordSize)
	for _, x := range recs {
		EncodeRecord(r, x)
		b = append(b, r...)
	}
	return b
}

func open(t *testing.T, path string, opts Options) (*Journal, []Record, error) {
	t.Helper()
	var got []Record
	j, err := Open(path, 4096, opts, func(r Record) { got = append(got, r) })
	return j, got, err
}

var three = []Record{rec(0, 1, Data), rec(2, 3, Zero), rec(9, 1, Data)}

func TestAppendReplay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	j, got, err := open(t, path, Options{})
	if err != nil || len(got) != 0 {
		t.Fatalf("new journal: %v, %d records", err, len(got))
	}
	if err := j.Append(three[:2]); err != nil {
		t.Fatal(err)
	}
	if err := j.Append(three[2:]); err != nil {
		t.Fatal(err)
	}
	if j.Len() != 3 {
		t.Fatalf("Len = %d", j.Len())
	}
	j.Close()
	j, got, err = open(t, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if len(got) != 3 || got[0] != three[0] || got[1] != three[1] || got[2] != three[2] {
		t.Fatalf("replayed %v, want %v", got, three)
	}
}

// Only a torn tail is dropped; damage followed by a valid record is
// refused with ErrCorrupt and the file is not changed.
func TestTornTailAndDamage(t *testing.T) {
	for _, c := range []struct {
		name    string
		mangle  func([]byte) []byte
		corrupt bool
		keep    int
	}{
		{"partial record", func(b []byte) []byte { return append(b, 1, 2, 3) }, false, 3},
		{"bad last record", func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, false, 2},
		{"bad last then partial", func(b []byte) []byte { b[len(b)-1] ^= 1; return append(b, 7) }, false, 2},
		{"zeroed tail", func(b []byte) []byte { return append(b, make([]byte, 4*RecordSize)...) }, false, 3},
		{"bad middle record", func(b []byte) []byte { b[HeaderSize+RecordSize+2] ^= 4; return b }, true, 0},
		{"bad first record", func(b []byte) []byte { b[HeaderSize] ^= 0x80; return b }, true, 0},
		{"impossible record", func(b []byte) []byte {
			EncodeRecord(b[HeaderSize+RecordSize:], rec(5, 0, Data))
			return b
		}, true, 0},
		{"bad header", func(b []byte) []byte { b[3] ^= 1; return b }, true, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "journal")
			raw := c.mangle(encode(three...))
			os.WriteFile(path, raw, 0o600)
			j, got, err := open(t, path, Options{})
			if c.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open = %v, want ErrCorrupt", err)
				}
				if len(got) != 0 {
					t.Fatal("records applied from a damaged journal")
				}
				if b, _ := os.ReadFile(path); !bytes.Equal(b, raw) {
					t.Fatal("a damaged journal was changed")
				}
				return
			}
			if err != nil {
				t.Fatalf("Open with a torn tail = %v", err)
			}
			if len(got) != c.keep {
				t.Fatalf("replayed %d records, want %d", len(got), c.keep)
			}
			if err := j.Append([]Record{rec(20, 1, Data)}); err != nil {
				t.Fatal(err)
			}
			j.Close()
			j, got, err = open(t, path, Options{})
			if err != nil || len(got) != c.keep+1 || got[c.keep] != rec(20, 1, Data) {
				t.Fatalf("after appending past the dropped tail: %v, %v", err, got)
			}
			j.Close()
		})
	}
}

// A failed fsync is fail-stop; the record count does not drift and a
// reopen sees whole records only.
func TestFailedSyncIsFailStop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	fail := false
	sync := func(fd int) error {
		if fail {
			return syscall.EIO
		}
		return syscall.Fdatasync(fd)
	}
	j, _, err := open(t, path, Options{Sync: sync})
	if err != nil {
		t.Fatal(err)
	}
	j.Append(three[:1])
	fail = true
	if err := j.Append(three[1:2]); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Append with failing fsync = %v", err)
	}
	fail = false
	if err := j.Append(three[1:2]); err == nil || j.Err() == nil {
		t.Fatal("Append after a failed fsync succeeded")
	}
	if err := j.Rewrite(three); err == nil {
		t.Fatal("Rewrite after a failed fsync succeeded")
	}
	if j.Len() != 1 {
		t.Fatalf("Len = %d after a failed append, want 1", j.Len())
	}
	j.Close()
	j, got, err := open(t, path, Options{})
	if err != nil || len(got) < 1 || got[0] != three[0] {
		t.Fatalf("reopen: %v, %v", err, got)
	}
	j.Close()
}

// A rewrite failing before its rename leaves the old journal and may be
// retried; a failed directory fsync after the rename is fail-stop.
func TestRewriteFailures(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "journal")
	failDir := false
	sync := func(fd int) error {
		var st syscall.Stat_t
		if failDir && syscall.Fstat(fd, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			return syscall.EIO
		}
		return syscall.Fdatasync(fd)
	}
	j, _, err := open(t, path, Options{Sync: sync})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { j.Close() }()
	j.Append(three)
	os.Mkdir(path+".tmp", 0o700) // the temp file cannot be created
	if err := j.Rewrite(three[:1]); err == nil || j.Err() != nil {
		t.Fatalf("Rewrite with an unwritable temp file = %v (fail-stop %v), want a retryable error", err, j.Err())
	}
	os.Remove(path + ".tmp")
	if err := j.Rewrite(three[:1]); err != nil || j.Len() != 1 {
		t.Fatalf("retried Rewrite = %v, Len %d", err, j.Len())
	}
	failDir = true
	if err := j.Rewrite(three); err == nil || j.Err() == nil {
		t.Fatalf("Rewrite with a failing directory fsync = %v, want fail-stop", err)
	}
}

// FuzzOpen: arbitrary bytes open (replaying a valid prefix) or fail with
// an error, never panic; a damaged journal is never changed.
func FuzzOpen(f *testing.F) {
	f.Add(encode(three...))
	f.Add(encode(rec(1<<62, 1<<62, Zero)))
	f.Add([]byte("OBDVJRN1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "journal")
		os.WriteFile(path, b, 0o600)
		j, got, err := open(t, path, Options{})
		if err != nil {
			if after, _ := os.ReadFile(path); len(b) >= HeaderSize && !bytes.Equal(after, b) {
				t.Fatal("a refused journal was changed")
			}
			return
		}
		defer j.Close()
		for _, r := range got {
			if r.Count == 0 || (r.State != Zero && r.State != Data) {
				t.Fatalf("impossible record replayed: %+v", r)
			}
		}
	})
}

// Read replays without writing: a missing file or one shorter than its
// header holds nothing (and is not created or completed), a torn tail is
// ignored and stays in the file, damage fails with ErrCorrupt.
func TestReadWritesNothing(t *testing.T) {
	dir := t.TempDir()
	read := func(path string) ([]Record, error) {
		var got []Record
		err := Read(path, 4096, func(r Record) { got = append(got, r) })
		return got, err
	}
	missing := filepath.Join(dir, "missing")
	if got, err := read(missing); err != nil || len(got) != 0 {
		t.Fatalf("Read of a missing journal: %v, %d records", err, len(got))
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Read created the missing journal: %v", err)
	}
	short := filepath.Join(dir, "short")
	os.WriteFile(short, EncodeHeader(4096)[:7], 0o600)
	if got, err := read(short); err != nil || len(got) != 0 {
		t.Fatalf("Read of a journal torn in its header: %v, %d records", err, len(got))
	}
	if b, _ := os.ReadFile(short); len(b) != 7 {
		t.Fatalf("Read changed a journal torn in its header to %d bytes", len(b))
	}
	torn := filepath.Join(dir, "torn")
	raw := append(encode(three...), 1, 2, 3, 4, 5)
	os.WriteFile(torn, raw, 0o600)
	got, err := read(torn)
	if err != nil || len(got) != 3 || got[2] != three[2] {
		t.Fatalf("Read of a torn journal: %v, %v", err, got)
	}
	if b, _ := os.ReadFile(torn); !bytes.Equal(b, raw) {
		t.Fatal("Read truncated a torn tail")
	}
	bad := filepath.Join(dir, "bad")
	raw = encode(three...)
	raw[HeaderSize+3] ^= 1 // the first record, followed by valid ones
	os.WriteFile(bad, raw, 0o600)
	if _, err := read(bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Read of a damaged journal = %v, want ErrCorrupt", err)
	}
}
