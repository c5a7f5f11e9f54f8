package torture

import (
	"bytes"
	"fmt"
)

// The model: what obdvol acknowledged, and so what every volume and
// snapshot must hold.
//
// A volume that no process serves has a list of possible states (alts):
// one when the last operation on it succeeded, more when an operation
// failed or was killed (its effect may or may not have happened). A
// served volume also has cur, the bytes after every acknowledged write,
// and pending, the writes sent since the last acknowledged flush: after
// a kill each byte they cover may hold the flushed value or the value of
// any of them; every other byte must hold the flushed value. A check
// reads the volume back, finds the state it matches (or reports a
// finding) and makes it the only one.

// write is one write (or write-zeroes) sent to a served volume.
type write struct {
	off  int64
	data []byte
}

// state is one possible state of a volume or a snapshot.
type state struct {
	absent  bool
	data    []byte  // the flushed content; len is the size
	pending []write // sent since data was flushed
	why     string  // the operation that may have produced this state
}

func (s *state) clone() *state {
	c := &state{absent: s.absent, data: append([]byte(nil), s.data...), why: s.why}
	c.pending = append(c.pending, s.pending...)
	return c
}

// match says whether act (nil: absent) is a possible content of s; if not,
// it describes the first difference.
func (s *state) match(act []byte, exists bool) (bool, string) {
	if s.absent || !exists {
		if s.absent == !exists {
			return true, ""
		}
		if s.absent {
			return false, "exists, expected absent"
		}
		return false, "absent, expected to exist"
	}
	if len(act) != len(s.data) {
		return false, fmt.Sprintf("size %d, expected %d", len(act), len(s.data))
	}
	if len(s.pending) == 0 {
		if i := firstDiff(act, s.data); i >= 0 {
			return false, describeDiff(act, s.data, i, 0)
		}
		return true, ""
	}
	for i := range act {
		if act[i] == s.data[i] {
			continue
		}
		ok := false
		for _, w := range s.pending {
			if int64(i) >= w.off && int64(i) < w.off+int64(len(w.data)) && w.data[int64(i)-w.off] == act[i] {
				ok = true
				break
			}
		}
		if !ok {
			return false, describeDiff(act, s.data, i, 0) + " (nor any unflushed write's)"
		}
	}
	return true, ""
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// describeDiff describes where act differs from exp from index i on; base
// is the volume offset of act[0].
func describeDiff(act, exp []byte, i int, base int64) string {
	n := 0
	zero := 0
	for j := i; j < len(act); j++ {
		if act[j] != exp[j] {
			n++
			if act[j] == 0 {
				zero++
			}
		}
	}
	end := min(i+16, len(act))
	o := base + int64(i)
	return fmt.Sprintf("%d bytes differ from offset %d (block %d at 4K; %d of them read as zero): got %x, want %x",
		n, o, o/4096, zero, act[i:end], exp[i:end])
}

// apply applies w to b.
func apply(b []byte, w write) {
	copy(b[w.off:], w.data)
}
