package snapshot

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A mapped blob truncated while in use gives an error, not a SIGBUS.
func TestFileSourceTruncatedWhileMapped(t *testing.T) {
	p := filepath.Join(t.TempDir(), "blob")
	os.WriteFile(p, make([]byte, 1<<20), 0o600)
	f, _ := os.Open(p)
	s, err := NewFileSource(f)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	os.Truncate(p, 4096)
	buf := make([]byte, 4096)
	if _, err := s.ReadAt(buf, 512<<10); !errors.Is(err, ErrFormat) {
		t.Fatalf("read past a truncation: %v", err)
	}
	if _, err := s.ReadAt(buf, 0); err != nil {
		t.Fatalf("read before the truncation point: %v", err)
	}
}
