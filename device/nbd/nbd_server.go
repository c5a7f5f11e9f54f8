package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/obdvol/obdvol/device"
)

// Export is a backend offered under a name.
type Export struct {
	Name        string
	Description string
	Backend     device.Backend
	ReadOnly    bool
}

// Server serves exports to any number of connections; each connection
// reaches only the export it chose. Requests of one connection run
// concurrently (up to MaxInFlight); replies are written whole, one at a
// time. The first export is also the default (empty name).
type Server struct {
	exports     []Export
	MaxInFlight int
	Logf        func(format string, args ...any)

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewServer returns a server for exports (at least one).
func NewServer(exports []Export) *Server {
	return &Server{exports: exports, MaxInFlight: 64, conns: map[net.Conn]struct{}{}}
}

func (s *Server) logf(f string, a ...any) {
	if s.Logf != nil {
		s.Logf(f, a...)
	}
}

func (s *Server) find(name string) *Export {
	if name == "" {
		return &s.exports[0]
	}
	for i := range s.exports {
		if s.exports[i].Name == name {
			return &s.exports[i]
		}
	}
	return nil
}

// Serve accepts connections until ctx ends, then stops reading new
// requests, lets in-flight ones finish, flushes every writable export and
// returns.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	go func() {
		<-ctx.Done()
		l.Close()
		s.mu.Lock()
		for c := range s.conns {
			// Unblock readers; in-flight requests still complete.
			if cr, ok := c.(interface{ CloseRead() error }); ok {
				cr.CloseRead()
			} else {
				c.Close()
			}
		}
		s.mu.Unlock()
	}()
	var err error
	for {
		c, aerr := l.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = aerr
			}
			break
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if herr := s.handle(c); herr != nil && !errors.Is(herr, io.EOF) && ctx.Err() == nil {
				s.logf("nbd: %s: %v", c.RemoteAddr(), herr)
			}
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
	// Close here too, so that whatever the listener does on Close (a
	// unix socket removes its path) has finished when Serve returns: a
	// caller listening again on the same path must not race with it.
	l.Close()
	s.wg.Wait()
	for _, e := range s.exports {
		if !e.ReadOnly {
			if ferr := e.Backend.Flush(); ferr != nil && err == nil {
				err = ferr
			}
		}
	}
	return err
}

// conn is one client connection.
type conn struct {
	s          *Server
	r          *bufio.Reader
	w          *bufio.Writer
	out        chan []byte // replies, written by one writer goroutine
	structured bool
	meta       bool
	exp        *Export
	size       uint64
}

func (s *Server) handle(nc net.Conn) error {
	c := &conn{s: s, r: bufio.NewReaderSize(nc, 64<<10), w: bufio.NewWriterSize(nc, 64<<10)}
	if err := c.handshake(); err != nil {
		return err
	}
	if c.exp == nil {
		return nil // the client aborted or only listed
	}
	return c.transmit()
}

func (c *conn) handshake() error {
	var b [18]byte
	be.PutUint64(b[0:], nbdMagic)
	be.PutUint64(b[8:], optMagic)
	be.PutUint16(b[16:], flagFixedNew|flagNoZeroes)
	c.w.Write(b[:])
	if err := c.w.Flush(); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.r, cf[:]); err != nil {
		return err
	}
	flags := be.Uint32(cf[:])
	if flags&clientFixedNew == 0 {
		return protoErr("client does not speak fixed newstyle")
	}
	noZeroes := flags&clientNoZeroes != 0
	for {
		o, err := readOption(c.r)
		if err != nil {
			return err
		}
		done, err := c.option(o, noZeroes)
		if err != nil {
			return err
		}
		if err := c.w.Flush(); err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

func (c *conn) reply(code, typ uint32, data []byte) {
	var h [20]byte
	be.PutUint64(h[0:], repMagic)
	be.PutUint32(h[8:], code)
	be.PutUint32(h[12:], typ)
	be.PutUint32(h[16:], uint32(len(data)))
	c.w.Write(h[:])
	c.w.Write(data)
}

func (c *conn) flagsFor(e *Export) uint16 {
	f := uint16(tfHasFlags | tfSendFlush | tfSendFUA | tfSendTrim | tfWriteZeroes | tfCanMultiConn)
	if e.ReadOnly {
		f |= tfReadOnly
	}
	return f
}

// option handles one option; done means transmission starts (or the
// client left).
func (c *conn) option(o option, noZeroes bool) (done bool, err error) {
	switch o.code {
	case optExportName:
		e := c.s.find(string(o.data))
		if e == nil {
			return false, protoErr("unknown export %q", o.data)
		}
		c.exp, c.size = e, e.Backend.Size()
		b := make([]byte, 10, 134)
		be.PutUint64(b, c.size)
		be.PutUint16(b[8:], c.flagsFor(e))
		if !noZeroes {
			b = b[:134]
		}
		c.w.Write(b)
		return true, nil
	case optAbort:
		c.reply(optAbort, repAck, nil)
		return true, nil
	case optList:
		if len(o.data) != 0 {
			c.reply(o.code, repErrInvalid, nil)
			return false, nil
		}
		for _, e := range c.s.exports {
			d := make([]byte, 4+len(e.Name))
			be.PutUint32(d, uint32(len(e.Name)))
			copy(d[4:], e.Name)
			c.reply(o.code, repServer, d)
		}
		c.reply(o.code, repAck, nil)
	case optStructured:
		if len(o.data) != 0 {
			c.reply(o.code, repErrInvalid, nil)
			return false, nil
		}
		c.structured = true
		c.reply(o.code, repAck, nil)
	case optListMetaCtx, optSetMetaCtx:
		name, queries, err := metaQueries(o.data)
		if err != nil || (o.code == optSetMetaCtx && !c.structured) {
			c.reply(o.code, repErrInvalid, nil)
			return false, nil
		}
		if c.s.find(name) == nil {
			c.reply(o.code, repErrUnknown, nil)
			return false, nil
		}
		c.meta = false
		for _, q := range queries {
			if q == allocContext || (o.code == optListMetaCtx && q == "base:") {
				d := make([]byte, 4+len(allocContext))
				be.PutUint32(d, metaContextID)
				copy(d[4:], allocContext)
				c.reply(o.code, repMetaContext, d)
				if o.code == optSetMetaCtx {
					c.meta = true
				}
			}
		}
		if o.code == optListMetaCtx && len(queries) == 0 {
			d := make([]byte, 4+len(allocContext))
			copy(d[4:], allocContext)
			c.reply(o.code, repMetaContext, d)
		}
		c.reply(o.code, repAck, nil)
	case optInfo, optGo:
		name, infos, err := exportRequest(o.data)
		if err != nil {
			c.reply(o.code, repErrInvalid, nil)
			return false, nil
		}
		e := c.s.find(name)
		if e == nil {
			c.reply(o.code, repErrUnknown, []byte("no such export"))
			return false, nil
		}
		d := make([]byte, 12)
		be.PutUint16(d, infoExport)
		be.PutUint64(d[2:], e.Backend.Size())
		be.PutUint16(d[10:], c.flagsFor(e))
		c.reply(o.code, repInfo, d)
		bs := make([]byte, 14)
		be.PutUint16(bs, infoBlockSize)
		be.PutUint32(bs[2:], 1)
		be.PutUint32(bs[6:], 4096)
		be.PutUint32(bs[10:], maxRequestLen)
		c.reply(o.code, repInfo, bs)
		for _, i := range infos {
			switch i {
			case infoName:
				c.reply(o.code, repInfo, append([]byte{0, infoName}, e.Name...))
			case infoDescription:
				c.reply(o.code, repInfo, append([]byte{0, infoDescription}, e.Description...))
			}
		}
		c.reply(o.code, repAck, nil)
		if o.code == optGo {
			c.exp, c.size = e, e.Backend.Size()
			return true, nil
		}
	case optStartTLS:
		c.reply(o.code, repErrPolicy, []byte("TLS is not offered: use a unix socket or loopback"))
	default:
		c.reply(o.code, repErrUnsup, nil)
	}
	return false, nil
}

func (s *Server) String() string { return fmt.Sprintf("nbd server (%d exports)", len(s.exports)) }
