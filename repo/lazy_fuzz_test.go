package repo

import (
	"bytes"
	"fmt"
	"testing"
)

// FuzzContentRange: the parser never panics, accepts only ranges with
// first <= last < total, and accepts what it would print.
func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-99/100", "bytes 5-5/*", "bytes 9-8/100", "bytes 0-99/99",
		"bytes */100", "bytes -1-5/10", "bytes 0-9223372036854775807/*", "bytes 00-01/02", "bytes 1-2/+3", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		first, last, total, err := parseContentRange(s)
		if err != nil {
			return
		}
		if first < 0 || last < first || (total != -1 && last >= total) || total < -1 {
			t.Fatalf("%q parsed to %d-%d/%d", s, first, last, total)
		}
		tot := "*"
		if total >= 0 {
			tot = fmt.Sprint(total)
		}
		a, b, c, err := parseContentRange(fmt.Sprintf("bytes %d-%d/%s", first, last, tot))
		if err != nil || a != first || b != last || c != total {
			t.Fatalf("%q: reprinted range does not parse back: %d-%d/%d, %v", s, a, b, c, err)
		}
	})
}

// FuzzLazyMap: the present-map decoder never panics, allocates no more
// than its input, and what it accepts encodes back to the same bytes.
func FuzzLazyMap(f *testing.F) {
	var s pageSet
	s.add(0, 3)
	s.add(7, 9)
	f.Add(encodeLazyMap(16<<10, 1<<20, &s))
	f.Add(encodeLazyMap(512, 0, &pageSet{}))
	f.Add([]byte("OBDVLMP2"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		page, size, m, err := decodeLazyMap(raw)
		if err != nil {
			return
		}
		if len(m.runs)*16 > len(raw) {
			t.Fatalf("%d runs from %d bytes", len(m.runs), len(raw))
		}
		if got := encodeLazyMap(page, size, &m); !bytes.Equal(got, raw) {
			t.Fatalf("accepted map does not encode back to its bytes")
		}
		if n := m.bytes(page, size); n < 0 || n > size {
			t.Fatalf("map covers %d bytes of %d", n, size)
		}
	})
}

// FuzzPageSet: add and remove agree with a plain bitmap, and runs stay
// sorted, disjoint and non-adjacent (what the map file requires).
func FuzzPageSet(f *testing.F) {
	f.Add([]byte{0, 1, 5, 1, 3, 9, 0, 0, 2})
	f.Fuzz(func(t *testing.T, ops []byte) {
		const pages = 64
		var s pageSet
		var ref [pages]bool
		for i := 0; i+2 < len(ops); i += 3 {
			a, b := int64(ops[i+1]%pages), int64(ops[i+2]%pages)
			if a > b {
				a, b = b, a
			}
			for p := a; p < b; p++ {
				ref[p] = ops[i]&1 == 0
			}
			if ops[i]&1 == 0 {
				s.add(a, b)
			} else {
				s.remove(a, b)
			}
		}
		for p := int64(0); p < pages; p++ {
			if s.has(p) != ref[p] {
				t.Fatalf("page %d: set says %v", p, s.has(p))
			}
		}
		for i, r := range s.runs {
			if r.first >= r.end || (i > 0 && s.runs[i-1].end >= r.first) {
				t.Fatalf("runs %v", s.runs)
			}
		}
		if _, _, _, err := decodeLazyMap(encodeLazyMap(1<<14, pages<<14, &s)); err != nil {
			t.Fatal(err)
		}
	})
}
