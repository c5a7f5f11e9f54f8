package daemon

import (
	"fmt"
	"net"
	"strings"

	"github.com/obdvol/obdvol/internal/unixsock"
)

// NBDSpec is a parsed NBD listen spec: unix:PATH or tcp:HOST:PORT.
type NBDSpec struct {
	Unix string // socket path, or ""
	TCP  string // host:port, or ""
}

// String is the spec as given: unix:PATH or tcp:HOST:PORT.
func (s NBDSpec) String() string {
	if s.Unix != "" {
		return "unix:" + s.Unix
	}
	return "tcp:" + s.TCP
}

// ParseNBDSpec checks a listen spec before anything is opened: unix:PATH,
// or tcp:HOST:PORT on loopback unless allowRemote (NBD has no
// authentication or encryption here). Errors wrap ErrBadRequest.
func ParseNBDSpec(spec string, allowRemote bool) (NBDSpec, error) {
	switch {
	case strings.HasPrefix(spec, "unix:"):
		path := strings.TrimPrefix(spec, "unix:")
		if path == "" {
			return NBDSpec{}, fmt.Errorf("%w: --nbd unix: needs a path", ErrBadRequest)
		}
		if strings.ContainsRune(path, 0) {
			return NBDSpec{}, fmt.Errorf("%w: --nbd unix: path with a NUL byte", ErrBadRequest)
		}
		return NBDSpec{Unix: path}, nil
	case strings.HasPrefix(spec, "tcp:"):
		addr := strings.TrimPrefix(spec, "tcp:")
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return NBDSpec{}, fmt.Errorf("%w: --nbd %s: %v", ErrBadRequest, spec, err)
		}
		if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && host != "localhost" && !allowRemote {
			return NBDSpec{}, fmt.Errorf("%w: --nbd %s: NBD has no authentication or TLS here; listen on loopback or pass --allow-remote", ErrBadRequest, spec)
		}
		return NBDSpec{TCP: addr}, nil
	}
	return NBDSpec{}, fmt.Errorf("%w: --nbd wants unix:PATH or tcp:HOST:PORT, got %q", ErrBadRequest, spec)
}

// Listen opens the listener (a unix socket with mode 0600 that replaces
// only a stale socket) and returns it with the URI of an export.
func (s NBDSpec) Listen() (net.Listener, func(export string) string, error) {
	if s.Unix != "" {
		l, err := unixsock.Listen(s.Unix)
		if err != nil {
			return nil, nil, err
		}
		return l, func(x string) string { return "nbd+unix:///" + x + "?socket=" + s.Unix }, nil
	}
	l, err := net.Listen("tcp", s.TCP)
	if err != nil {
		return nil, nil, err
	}
	a := l.Addr().String()
	return l, func(x string) string { return "nbd://" + a + "/" + x }, nil
}
