package volume

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// Snapshot and Flatten after Close (a live-snapshot request on the
// control socket racing a server shutdown): Snapshot's freeze flushes
// v.w == nil and panics; Flatten rewrites the catalogue record of a
// volume whose lock was released (another process may own it by now).
// Both must fail with ErrClosed.
func TestReviewSnapshotFlattenAfterClose(t *testing.T) {
	root := t.TempDir()
	m := testManager(t, root, newMemStore())
	if _, err := m.Create("v", 64*4096, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	v.WriteAt(bytes.Repeat([]byte{'a'}, 4096), 0)
	if _, err := v.Snapshot(context.Background(), "s0"); err != nil {
		t.Fatal(err)
	}
	v.WriteAt(bytes.Repeat([]byte{'b'}, 4096), 4096)
	v.Close()
	for name, f := range map[string]func() error{
		"Snapshot": func() error { _, err := v.Snapshot(context.Background(), "s1"); return err },
		"Flatten":  func() error { _, err := v.Flatten(context.Background()); return err },
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s after Close panicked: %v", name, r)
				}
			}()
			if err := f(); !errors.Is(err, ErrClosed) {
				t.Errorf("%s after Close: %v, want ErrClosed", name, err)
			}
		}()
	}
}
