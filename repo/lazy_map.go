package repo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sort"
)

// pageSet is a set of pages held as sorted, disjoint, non-adjacent runs
// [first, end). Its memory grows with the number of runs (what was
// fetched), never with the blob's claimed size.
type pageSet struct {
	runs []pageRun
}

type pageRun struct{ first, end int64 }

// find returns the index of the first run whose end is past p.
func (s *pageSet) find(p int64) int {
	return sort.Search(len(s.runs), func(i int) bool { return s.runs[i].end > p })
}

func (s *pageSet) has(p int64) bool {
	i := s.find(p)
	return i < len(s.runs) && s.runs[i].first <= p
}

// firstMissing returns the first page in [first, last] not in s.
func (s *pageSet) firstMissing(first, last int64) (int64, bool) {
	p := first
	for i := s.find(p); i < len(s.runs) && s.runs[i].first <= p; i++ {
		p = s.runs[i].end
	}
	return p, p <= last
}

// full reports whether s holds every page of [0, pages).
func (s *pageSet) full(pages int64) bool {
	_, miss := s.firstMissing(0, pages-1)
	return pages == 0 || !miss
}

// add inserts pages [first, end).
func (s *pageSet) add(first, end int64) {
	if first >= end {
		return
	}
	// Runs touching or overlapping [first, end) merge into one.
	i := sort.Search(len(s.runs), func(i int) bool { return s.runs[i].end >= first })
	j := i
	for j < len(s.runs) && s.runs[j].first <= end {
		first = min(first, s.runs[j].first)
		end = max(end, s.runs[j].end)
		j++
	}
	s.runs = append(s.runs[:i], append([]pageRun{{first, end}}, s.runs[j:]...)...)
}

// remove deletes pages [first, end).
func (s *pageSet) remove(first, end int64) {
	if first >= end {
		return
	}
	var out []pageRun
	for _, r := range s.runs {
		if r.end <= first || r.first >= end {
			out = append(out, r)
			continue
		}
		if r.first < first {
			out = append(out, pageRun{r.first, first})
		}
		if r.end > end {
			out = append(out, pageRun{end, r.end})
		}
	}
	s.runs = out
}

// bytes is how many bytes of a blob of size bytes the pages cover.
func (s *pageSet) bytes(page, size int64) int64 {
	var n int64
	for _, r := range s.runs {
		n += min(r.end*page, size) - r.first*page
	}
	return n
}

func (s *pageSet) clone() pageSet {
	return pageSet{runs: append([]pageRun(nil), s.runs...)}
}

// The present-map file, Root/partial/<hex>.map, little-endian:
//
//	 0  8  magic "OBDVLMP2"
//	 8  8  page size (a power of two, 512 B to 1 GiB)
//	16  8  blob size
//	24  8  run count n
//	32 16n runs: first page, end page (exclusive); sorted, disjoint,
//	       non-adjacent, inside the blob
//	   4   crc32c of every byte before it
//
// A map that is missing, damaged or of another format means that no page
// is known present (pages are fetched again): it can cost bytes on the
// wire, never wrong bytes.
const (
	lazyMapMagic  = "OBDVLMP2"
	lazyMapHeader = 32
	minLazyPage   = 512
	maxLazyPage   = 1 << 30
)

var errLazyMap = errors.New("lazy present-map is damaged")

func lazyPages(size, page int64) int64 { return (size + page - 1) / page }

func encodeLazyMap(page, size int64, s *pageSet) []byte {
	raw := make([]byte, lazyMapHeader+16*len(s.runs)+4)
	le := binary.LittleEndian
	copy(raw, lazyMapMagic)
	le.PutUint64(raw[8:], uint64(page))
	le.PutUint64(raw[16:], uint64(size))
	le.PutUint64(raw[24:], uint64(len(s.runs)))
	for i, r := range s.runs {
		le.PutUint64(raw[lazyMapHeader+16*i:], uint64(r.first))
		le.PutUint64(raw[lazyMapHeader+16*i+8:], uint64(r.end))
	}
	n := len(raw) - 4
	le.PutUint32(raw[n:], crc32.Checksum(raw[:n], castagnoliTable))
	return raw
}

var castagnoliTable = crc32.MakeTable(crc32.Castagnoli)

// decodeLazyMap parses a present-map file and checks every invariant
// above. It allocates no more than len(raw).
func decodeLazyMap(raw []byte) (page, size int64, s pageSet, err error) {
	le := binary.LittleEndian
	if len(raw) < lazyMapHeader+4 || string(raw[:8]) != lazyMapMagic {
		return 0, 0, s, fmt.Errorf("%w: bad magic or length %d", errLazyMap, len(raw))
	}
	n := len(raw) - 4
	if le.Uint32(raw[n:]) != crc32.Checksum(raw[:n], castagnoliTable) {
		return 0, 0, s, fmt.Errorf("%w: checksum", errLazyMap)
	}
	pg, sz, cnt := le.Uint64(raw[8:]), le.Uint64(raw[16:]), le.Uint64(raw[24:])
	if pg < minLazyPage || pg > maxLazyPage || pg&(pg-1) != 0 {
		return 0, 0, s, fmt.Errorf("%w: page size %d", errLazyMap, pg)
	}
	if sz > maxLazySize {
		return 0, 0, s, fmt.Errorf("%w: blob size %d", errLazyMap, sz)
	}
	if cnt != uint64(n-lazyMapHeader)/16 || uint64(n-lazyMapHeader)%16 != 0 {
		return 0, 0, s, fmt.Errorf("%w: %d runs in %d bytes", errLazyMap, cnt, len(raw))
	}
	page, size = int64(pg), int64(sz)
	pages := lazyPages(size, page)
	if cnt > 0 {
		s.runs = make([]pageRun, 0, cnt)
	}
	prev := int64(-1)
	for i := 0; i < int(cnt); i++ {
		a, b := le.Uint64(raw[lazyMapHeader+16*i:]), le.Uint64(raw[lazyMapHeader+16*i+8:])
		if a >= b || b > uint64(pages) || int64(a) <= prev {
			return 0, 0, pageSet{}, fmt.Errorf("%w: run %d [%d,%d) of %d pages", errLazyMap, i, a, b, pages)
		}
		s.runs = append(s.runs, pageRun{int64(a), int64(b)})
		prev = int64(b)
	}
	return page, size, s, nil
}

// readLazyMap reads the map at path; a missing or damaged map, or one of
// another page size or blob size, reads as empty.
func readLazyMap(path string, page, size int64) pageSet {
	raw, err := os.ReadFile(path)
	if err != nil {
		return pageSet{}
	}
	pg, sz, s, err := decodeLazyMap(raw)
	if err != nil || pg != page || sz != size {
		return pageSet{}
	}
	return s
}

// writeLazyMap replaces the map at path (temp file, rename). With durable
// set it fsyncs the file before the rename and the directory after it:
// eviction needs that before it punches holes; a merge that only adds
// pages does not (a map lost in a crash reads as empty).
func writeLazyMap(path string, page, size int64, s *pageSet, durable bool) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(encodeLazyMap(page, size, s))
	if err == nil && durable {
		err = f.Sync()
	}
	if e := f.Close(); err == nil {
		err = e
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil && durable {
		err = syncDirOf(path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("lazy present-map: %w", err)
	}
	return nil
}
