package ublk

import "testing"

// The user-copy offset of (queue, tag) as ublk_cmd.h encodes it, and pool
// buffers sized by class.
func TestUserCopyOffsetAndPool(t *testing.T) {
	for _, c := range []struct {
		q, tag int
		want   int64
	}{{0, 0, 0x80000000}, {0, 1, 0x80000000 + 1<<25}, {1, 0, 0x80000000 + 1<<41}, {3, 63, 0x80000000 + 3<<41 + 63<<25}} {
		if got := userCopyOffset(c.q, c.tag); got != c.want {
			t.Errorf("userCopyOffset(%d, %d) = %#x, want %#x", c.q, c.tag, got, c.want)
		}
	}
	for _, c := range []struct{ n, size, class int }{{512, 4 << 10, 0}, {4 << 10, 4 << 10, 0}, {4<<10 + 1, 64 << 10, 1}, {512 << 10, 1 << 20, 2}, {2 << 20, 2 << 20, -1}} {
		b, class := getCopyBuf(c.n)
		if len(*b) != c.size || class != c.class {
			t.Errorf("getCopyBuf(%d): %d bytes, class %d; want %d, %d", c.n, len(*b), class, c.size, c.class)
		}
		putCopyBuf(b, class)
	}
}
