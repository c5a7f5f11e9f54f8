package torture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// A minimal NBD client (fixed newstyle, NBD_OPT_EXPORT_NAME, simple
// replies) that pipelines requests, so that several writes are in flight
// in the server at once, as with fio --iodepth or a kernel client.

const (
	nbdMagic      = 0x4e42444d41474943
	nbdOptMagic   = 0x49484156454F5054
	nbdReqMagic   = 0x25609513
	nbdReplyMagic = 0x67446698

	nbdCmdRead        = 0
	nbdCmdWrite       = 1
	nbdCmdDisc        = 2
	nbdCmdFlush       = 3
	nbdCmdWriteZeroes = 6
)

var be = binary.BigEndian

type nbdClient struct {
	c      net.Conn
	r      *bufio.Reader
	w      *bufio.Writer
	size   uint64
	cookie uint64
}

// nbdRequest is one request of a pipelined batch.
type nbdRequest struct {
	typ  uint16
	off  uint64
	n    uint32
	data []byte // write payload; read result
	err  uint32 // errno in the reply
}

func dialNBD(sock, export string, timeout time.Duration) (*nbdClient, error) {
	c, err := net.DialTimeout("unix", sock, timeout)
	if err != nil {
		return nil, err
	}
	cl := &nbdClient{c: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}
	c.SetDeadline(time.Now().Add(timeout))
	if err := cl.handshake(export); err != nil {
		c.Close()
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	return cl, nil
}

func (cl *nbdClient) handshake(export string) error {
	var h [18]byte
	if _, err := io.ReadFull(cl.r, h[:]); err != nil {
		return err
	}
	if be.Uint64(h[0:]) != nbdMagic || be.Uint64(h[8:]) != nbdOptMagic {
		return errors.New("bad server greeting")
	}
	var b []byte
	b = be.AppendUint32(b, 1|2) // fixed newstyle, no zeroes
	b = be.AppendUint64(b, nbdOptMagic)
	b = be.AppendUint32(b, 1) // NBD_OPT_EXPORT_NAME
	b = be.AppendUint32(b, uint32(len(export)))
	b = append(b, export...)
	cl.w.Write(b)
	if err := cl.w.Flush(); err != nil {
		return err
	}
	var r [10]byte
	if _, err := io.ReadFull(cl.r, r[:]); err != nil {
		return err
	}
	cl.size = be.Uint64(r[:])
	return nil
}

// do sends every request, then reads every reply (in any order), with a
// deadline: a server that does not answer in time has hung.
func (cl *nbdClient) do(reqs []*nbdRequest, timeout time.Duration) error {
	cl.c.SetDeadline(time.Now().Add(timeout))
	byCookie := map[uint64]*nbdRequest{}
	for _, q := range reqs {
		cl.cookie++
		byCookie[cl.cookie] = q
		var h [28]byte
		be.PutUint32(h[0:], nbdReqMagic)
		be.PutUint16(h[6:], q.typ)
		be.PutUint64(h[8:], cl.cookie)
		be.PutUint64(h[16:], q.off)
		be.PutUint32(h[24:], q.n)
		cl.w.Write(h[:])
		if q.typ == nbdCmdWrite {
			cl.w.Write(q.data)
		}
	}
	if err := cl.w.Flush(); err != nil {
		return err
	}
	for range reqs {
		var h [16]byte
		if _, err := io.ReadFull(cl.r, h[:]); err != nil {
			return err
		}
		if be.Uint32(h[0:]) != nbdReplyMagic {
			return fmt.Errorf("bad reply magic %#x", be.Uint32(h[0:]))
		}
		q := byCookie[be.Uint64(h[8:])]
		if q == nil {
			return fmt.Errorf("reply to unknown cookie %d", be.Uint64(h[8:]))
		}
		delete(byCookie, be.Uint64(h[8:]))
		q.err = be.Uint32(h[4:])
		if q.typ == nbdCmdRead && q.err == 0 {
			q.data = make([]byte, q.n)
			if _, err := io.ReadFull(cl.r, q.data); err != nil {
				return err
			}
		}
	}
	return nil
}

func (cl *nbdClient) close() {
	var h [28]byte
	be.PutUint32(h[0:], nbdReqMagic)
	be.PutUint16(h[6:], nbdCmdDisc)
	cl.c.SetDeadline(time.Now().Add(time.Second))
	cl.w.Write(h[:])
	cl.w.Flush()
	cl.c.Close()
}
