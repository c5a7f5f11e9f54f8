package snapshot

import (
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Verify checks the header: its crc32c, its magic, its reserved bytes and
// that it agrees with the trailer. Open does not need it and still works.
func TestVerifyChecksHeader(t *testing.T) {
	r := rand.New(rand.NewSource(9))
	good := buildLayer(t, 16*tbs, CodecZstd, 0, map[uint64][]byte{0: randBlock(r), 3: randBlock(r)})
	l, err := Open(BytesSource(good))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Verify(); err != nil {
		t.Fatalf("precondition: the intact layer fails Verify: %v", err)
	}
	fix := func(b []byte) { // recompute the header crc after an edit
		h := b[:HeaderSize]
		c := crc(h[:28])
		h[28], h[29], h[30], h[31] = byte(c), byte(c>>8), byte(c>>16), byte(c>>24)
	}
	for _, c := range []struct {
		name string
		edit func(b []byte)
		want error
	}{
		{"garbage", func(b []byte) { r.Read(b[:HeaderSize]) }, ErrFormat},
		{"one bit of the crc", func(b []byte) { b[30] ^= 4 }, ErrChecksum},
		{"one bit of the block size", func(b []byte) { b[13] ^= 1 }, ErrChecksum},
		{"block size with its crc", func(b []byte) { b[13] ^= 0x20; fix(b) }, ErrFormat},
		{"codec with its crc", func(b []byte) { b[20] = byte(CodecS2); fix(b) }, ErrFormat},
		{"reserved with its crc", func(b []byte) { b[25] = 1; fix(b) }, ErrFormat},
	} {
		bad := append([]byte(nil), good...)
		c.edit(bad)
		l, err := Open(BytesSource(bad))
		if err != nil {
			t.Fatalf("%s: Open = %v; the header is not needed to open", c.name, err)
		}
		if err := l.Verify(); !errors.Is(err, c.want) {
			t.Errorf("%s: Verify = %v, want %v", c.name, err, c.want)
		}
	}
}

// A chunk that fails its checksum during a chain read is named by its
// blob, not only by its position in the chain.
func TestChainErrorNamesLayer(t *testing.T) {
	r := rand.New(rand.NewSource(10))
	base := buildLayer(t, 16*tbs, CodecZstd, 0, map[uint64][]byte{1: randBlock(r)})
	top := buildLayer(t, 16*tbs, CodecZstd, 0, map[uint64][]byte{0: randBlock(r)})
	top[HeaderSize+10] ^= 0x55
	dir := t.TempDir()
	var layers []*Layer
	for i, b := range [][]byte{base, top} {
		p := filepath.Join(dir, []string{"sha256-base", "sha256-top"}[i])
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		src, err := NewFileSource(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		l, err := Open(src)
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	ch, err := NewChain(layers, 16*tbs, tbs, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ch.ReadAt(make([]byte, tbs), 0)
	if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "sha256-top") {
		t.Fatalf("ReadAt = %v, want ErrChecksum naming sha256-top", err)
	}

	// A file named as in a content store is named by its digest.
	const hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	p := filepath.Join(dir, "blobs", "sha256", hex)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, top, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewFileSource(f)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if got := src.Label(); got != "sha256:"+hex {
		t.Errorf("Label() = %q, want the digest", got)
	}
}
