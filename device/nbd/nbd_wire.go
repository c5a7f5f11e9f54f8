// Package nbd serves device.Backends over the NBD protocol (fixed newstyle
// handshake, structured replies, base:allocation block status), for VMs,
// hosts without ublk, and tools such as qemu-img, nbdcopy and fio.
//
// Glossary:
//   - export: a named backend a client can choose in the handshake.
//   - option haggling: the handshake phase where the client asks for an
//     export, structured replies and metadata contexts.
//   - transmission: the phase of READ/WRITE/FLUSH/TRIM/... requests.
package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Protocol constants (NetworkBlockDevice/nbd doc/proto.md).
const (
	nbdMagic       = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic       = 0x49484156454F5054 // "IHAVEOPT"
	repMagic       = 0x3e889045565a9
	requestMagic   = 0x25609513
	simpleMagic    = 0x67446698
	structMagic    = 0x668e33ef
	flagFixedNew   = 1
	flagNoZeroes   = 2
	clientFixedNew = 1
	clientNoZeroes = 2

	optExportName   = 1
	optAbort        = 2
	optList         = 3
	optStartTLS     = 5
	optInfo         = 6
	optGo           = 7
	optStructured   = 8
	optListMetaCtx  = 9
	optSetMetaCtx   = 10
	repAck          = 1
	repServer       = 2
	repInfo         = 3
	repMetaContext  = 4
	repErrUnsup     = 1<<31 + 1
	repErrPolicy    = 1<<31 + 2
	repErrInvalid   = 1<<31 + 3
	repErrUnknown   = 1<<31 + 6
	repErrTooBig    = 1<<31 + 9
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	tfHasFlags     = 1
	tfReadOnly     = 2
	tfSendFlush    = 4
	tfSendFUA      = 8
	tfSendTrim     = 32
	tfWriteZeroes  = 64
	tfCanMultiConn = 256

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
	cmdFlagFUA     = 1
	cmdFlagNoHole  = 2
	cmdFlagDF      = 4
	cmdFlagReqOne  = 8

	chunkNone        = 0
	chunkOffsetData  = 1
	chunkOffsetHole  = 2
	chunkBlockStatus = 5
	chunkError       = 1<<15 + 1
	replyFlagDone    = 1

	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95

	stateHole = 1
	stateZero = 2

	// Limits a client cannot exceed.
	maxOptionLen  = 64 << 10
	maxRequestLen = 32 << 20
	metaContextID = 1
	allocContext  = "base:allocation"
)

// ErrProtocol is wrapped when a client breaks the protocol; the
// connection is closed.
var ErrProtocol = errors.New("nbd protocol error")

func protoErr(f string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(f, a...))
}

var be = binary.BigEndian

// option is one client option in the handshake.
type option struct {
	code uint32
	data []byte
}

// readOption reads one option, refusing oversized ones before allocating.
func readOption(r io.Reader) (option, error) {
	var h [16]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return option{}, err
	}
	if be.Uint64(h[0:]) != optMagic {
		return option{}, protoErr("bad option magic %#x", be.Uint64(h[0:]))
	}
	n := be.Uint32(h[12:])
	if n > maxOptionLen {
		return option{}, protoErr("option of %d bytes", n)
	}
	o := option{code: be.Uint32(h[8:]), data: make([]byte, n)}
	_, err := io.ReadFull(r, o.data)
	return o, err
}

// request is one transmission request.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	offset uint64
	length uint32
}

func parseRequest(h []byte) (request, error) {
	if len(h) != 28 || be.Uint32(h[0:]) != requestMagic {
		return request{}, protoErr("bad request magic")
	}
	return request{flags: be.Uint16(h[4:]), typ: be.Uint16(h[6:]), cookie: be.Uint64(h[8:]),
		offset: be.Uint64(h[16:]), length: be.Uint32(h[24:])}, nil
}

// exportRequest decodes the name and info requests of OPT_INFO/OPT_GO.
func exportRequest(d []byte) (name string, infos []uint16, err error) {
	if len(d) < 4 {
		return "", nil, protoErr("short info option")
	}
	n := be.Uint32(d)
	if uint64(n)+6 > uint64(len(d)) {
		return "", nil, protoErr("info option name overruns")
	}
	name = string(d[4 : 4+n])
	d = d[4+n:]
	k := int(be.Uint16(d))
	d = d[2:]
	if len(d) != 2*k {
		return "", nil, protoErr("info option has %d bytes for %d requests", len(d), k)
	}
	for i := 0; i < k; i++ {
		infos = append(infos, be.Uint16(d[2*i:]))
	}
	return name, infos, nil
}

// metaQueries decodes LIST/SET_META_CONTEXT: export name and queries.
func metaQueries(d []byte) (name string, queries []string, err error) {
	if len(d) < 8 {
		return "", nil, protoErr("short meta context option")
	}
	n := be.Uint32(d)
	if uint64(n)+8 > uint64(len(d)) {
		return "", nil, protoErr("meta context name overruns")
	}
	name = string(d[4 : 4+n])
	d = d[4+n:]
	k := be.Uint32(d)
	d = d[4:]
	for i := uint32(0); i < k; i++ {
		if len(d) < 4 {
			return "", nil, protoErr("meta context query overruns")
		}
		l := be.Uint32(d)
		if uint64(l)+4 > uint64(len(d)) {
			return "", nil, protoErr("meta context query overruns")
		}
		queries = append(queries, string(d[4:4+l]))
		d = d[4+l:]
	}
	if len(d) != 0 {
		return "", nil, protoErr("trailing bytes in meta context option")
	}
	return name, queries, nil
}
