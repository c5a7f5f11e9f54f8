package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand"
	"os"
	"testing"
)

// Blobs of awkward sizes, written in awkward pieces, come back byte-exact
// under their sha256, whether or not the filesystem takes O_DIRECT.
func TestWriterRoundTrip(t *testing.T) {
	for _, dir := range []string{t.TempDir(), "/dev/shm"} {
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		root, err := os.MkdirTemp(dir, "store-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(root)
		s, err := NewStore(root)
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewSource(1))
		for _, size := range []int{0, 1, 4095, 4096, pipeBuf - 1, pipeBuf, pipeBuf + 1, 3*pipeBuf + 12345} {
			data := make([]byte, size)
			r.Read(data)
			w, err := s.Create()
			if err != nil {
				t.Fatal(err)
			}
			for rest := data; len(rest) > 0; {
				n := min(len(rest), r.Intn(300000)+1)
				if _, err := w.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			sum := sha256.Sum256(data)
			want := "sha256:" + hex.EncodeToString(sum[:])
			d, n, err := w.Commit(want)
			if err != nil || d != want || n != int64(size) {
				t.Fatalf("%s: size %d: Commit = %s, %d, %v", dir, size, d, n, err)
			}
			f, err := s.Open(d)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(f)
			f.Close()
			if !bytes.Equal(got, data) {
				t.Fatalf("%s: size %d: stored bytes differ", dir, size)
			}
		}
		// A wrong expected digest stores nothing.
		w, _ := s.Create()
		w.Write([]byte("hello"))
		if _, _, err := w.Commit("sha256:" + hex.EncodeToString(make([]byte, 32))); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("mismatch: %v", err)
		}
		if list, _ := s.List(); len(list) != 8 {
			t.Fatalf("store has %d blobs after a rejected commit", len(list))
		}
	}
}
