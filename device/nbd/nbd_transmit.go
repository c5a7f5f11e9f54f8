package nbd

import (
	"errors"
	"io"
	"sync"
	"syscall"

	"github.com/obdvol/obdvol/device"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 128<<10); return &b }}

func getBuf(n int) *[]byte {
	p := bufPool.Get().(*[]byte)
	if cap(*p) < n {
		*p = make([]byte, n)
	}
	*p = (*p)[:n]
	return p
}

// job is one request handed to a worker.
type job struct {
	r    request
	data *[]byte
}

// transmit reads requests and runs them on a pool of workers (long-lived,
// so their stacks grow once) until the client disconnects, breaks the
// protocol, or the server shuts down; in-flight requests always finish and
// get their replies. Replies go through one writer goroutine that flushes
// only when no other reply is ready, so a busy connection sends many
// replies per system call without delaying any.
func (c *conn) transmit() error {
	if err := c.w.Flush(); err != nil {
		return err
	}
	c.out = make(chan []byte, 256)
	wdone := make(chan struct{})
	go c.writer(wdone)
	jobs := make(chan job)
	var wg sync.WaitGroup
	for i := 0; i < max(1, c.s.MaxInFlight); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				c.serve(j.r, j.data)
				if j.data != nil {
					bufPool.Put(j.data)
				}
			}
		}()
	}
	defer func() {
		close(jobs)
		wg.Wait()
		close(c.out)
		<-wdone
	}()
	var h [28]byte
	for {
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			return err
		}
		req, err := parseRequest(h[:])
		if err != nil {
			return err
		}
		if req.typ == cmdDisc {
			return nil
		}
		var data *[]byte
		if req.typ == cmdWrite {
			if req.length > maxRequestLen {
				return protoErr("write of %d bytes", req.length)
			}
			data = getBuf(int(req.length))
			if _, err := io.ReadFull(c.r, *data); err != nil {
				return err
			}
		}
		jobs <- job{req, data}
	}
}

// writer writes replies in order of completion, flushing when idle.
func (c *conn) writer(done chan struct{}) {
	defer close(done)
	for b := range c.out {
		c.w.Write(b)
		putReply(b)
		for more := true; more; {
			select {
			case b, ok := <-c.out:
				if !ok {
					c.w.Flush()
					return
				}
				c.w.Write(b)
				putReply(b)
			default:
				more = false
			}
		}
		c.w.Flush()
	}
}

var replyPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096+64); return &b }}

func newReply(n int) []byte {
	p := replyPool.Get().(*[]byte)
	if cap(*p) < n {
		return make([]byte, 0, n)
	}
	return (*p)[:0]
}

func putReply(b []byte) {
	if cap(b) <= 1<<20 {
		replyPool.Put(&b)
	}
}

// check validates a request's range; it returns an NBD errno or 0.
func (c *conn) check(r request, write bool) uint32 {
	if write && c.exp.ReadOnly {
		return errPerm
	}
	if r.length > maxRequestLen && (r.typ == cmdRead || r.typ == cmdWrite) {
		return errOverflow
	}
	if r.offset > c.size || uint64(r.length) > c.size-r.offset {
		if write {
			return errNoSpc
		}
		return errInval
	}
	return 0
}

func (c *conn) serve(r request, data *[]byte) {
	b := c.exp.Backend
	var errno uint32
	fua := func() {
		if errno == 0 && r.flags&cmdFlagFUA != 0 {
			if b.Flush() != nil {
				errno = errIO
			}
		}
	}
	switch r.typ {
	case cmdRead:
		if errno = c.check(r, false); errno == 0 {
			c.read(r)
			return
		}
	case cmdWrite:
		if errno = c.check(r, true); errno == 0 {
			if _, err := b.WriteAt(*data, int64(r.offset)); err != nil {
				errno = writeErrno(err)
			}
			fua()
		}
	case cmdFlush:
		if b.Flush() != nil {
			errno = errIO
		}
	case cmdTrim, cmdWriteZeroes:
		// NO_HOLE asks for allocated zeros; obdvol records a zero extent
		// either way (it reads as zeros and stores nothing), which the
		// protocol allows: NO_HOLE only forbids punching holes that make
		// later writes fail, and ours never do.
		if errno = c.check(r, true); errno == 0 {
			var err error
			if r.typ == cmdTrim {
				err = b.Discard(int64(r.offset), int64(r.length))
			} else {
				err = b.WriteZeroes(int64(r.offset), int64(r.length))
			}
			if err != nil {
				errno = writeErrno(err)
			}
			fua()
		}
	case cmdCache:
		errno = c.check(r, false)
	case cmdBlockStatus:
		if !c.structured || !c.meta {
			errno = errInval
		} else if errno = c.check(r, false); errno == 0 {
			c.blockStatus(r)
			return
		}
	default:
		errno = errInval
	}
	c.simpleReply(r.cookie, errno, nil)
}

// writeErrno is the NBD error for a failed write, write-zeroes or trim:
// NBD_ENOSPC when the backend ran out of space (qemu then reports ENOSPC,
// so a guest with werror=enospc pauses instead of seeing a bad disk; the
// kernel client reports every error as an I/O error), NBD_EIO otherwise.
func writeErrno(err error) uint32 {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return errNoSpc
	}
	return errIO
}

func (c *conn) simpleReply(cookie uint64, errno uint32, data []byte) {
	b := newReply(16 + len(data))[:16]
	be.PutUint32(b[0:], simpleMagic)
	be.PutUint32(b[4:], errno)
	be.PutUint64(b[8:], cookie)
	c.out <- append(b, data...)
}

// chunk writes one structured reply chunk: header, then parts.
func (c *conn) chunk(cookie uint64, flags, typ uint16, parts ...[]byte) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b := newReply(20 + n)[:20]
	be.PutUint32(b[0:], structMagic)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], typ)
	be.PutUint64(b[8:], cookie)
	be.PutUint32(b[16:], uint32(n))
	for _, p := range parts {
		b = append(b, p...)
	}
	c.out <- b
}

func (c *conn) errorChunk(cookie uint64, errno uint32, msg string) {
	p := make([]byte, 6+len(msg))
	be.PutUint32(p, errno)
	be.PutUint16(p[4:], uint16(len(msg)))
	copy(p[6:], msg)
	c.chunk(cookie, replyFlagDone, chunkError, p)
}

func (c *conn) read(r request) {
	buf := getBuf(int(r.length))
	defer bufPool.Put(buf)
	_, err := c.exp.Backend.ReadAt(*buf, int64(r.offset))
	if !c.structured {
		if err != nil {
			c.simpleReply(r.cookie, errIO, nil)
			return
		}
		c.simpleReply(r.cookie, 0, *buf)
		return
	}
	if err != nil {
		c.errorChunk(r.cookie, errIO, truncMsg(err))
		return
	}
	var off [8]byte
	be.PutUint64(off[:], r.offset)
	c.chunk(r.cookie, replyFlagDone, chunkOffsetData, off[:], *buf)
}

func truncMsg(err error) string {
	s := err.Error()
	if len(s) > 4096 {
		s = s[:4096]
	}
	return s
}

// blockStatus answers base:allocation for [offset, offset+length).
func (c *conn) blockStatus(r request) {
	desc := make([]byte, 4, 4+8*64)
	be.PutUint32(desc, metaContextID)
	add := func(n int64, flags uint32) bool {
		for n > 0 {
			l := min(n, 1<<31)
			var d [8]byte
			be.PutUint32(d[0:], uint32(l))
			be.PutUint32(d[4:], flags)
			desc = append(desc, d[:]...)
			n -= l
			if r.flags&cmdFlagReqOne != 0 || len(desc) > 4+8*(1<<16) {
				return false
			}
		}
		return true
	}
	var err error
	if m, ok := c.exp.Backend.(device.Mapper); ok {
		err = m.Map(int64(r.offset), int64(r.length), func(n int64, hole, zero bool) bool {
			var f uint32
			if hole {
				f |= stateHole
			}
			if zero {
				f |= stateZero
			}
			// Merge with the previous descriptor of the same kind.
			if k := len(desc); k > 4 && be.Uint32(desc[k-4:]) == f && uint64(be.Uint32(desc[k-8:]))+uint64(n) < 1<<31 && r.flags&cmdFlagReqOne == 0 {
				be.PutUint32(desc[k-8:], be.Uint32(desc[k-8:])+uint32(n))
				return true
			}
			return add(n, f)
		})
	} else {
		add(int64(r.length), 0)
	}
	if err != nil {
		c.errorChunk(r.cookie, errIO, truncMsg(err))
		return
	}
	c.chunk(r.cookie, replyFlagDone, chunkBlockStatus, desc)
}
