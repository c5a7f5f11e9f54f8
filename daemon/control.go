package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdvol/obdvol/internal/unixsock"
)

// SocketPath is the daemon's control socket under root.
func SocketPath(root string) string { return filepath.Join(root, "run", "daemon.sock") }

// VolumeSocketPath is the control socket of the process that owns vol.
func VolumeSocketPath(root, vol string) string { return filepath.Join(root, "run", vol+".sock") }

// requestTimeout bounds one control connection (a snapshot of a large
// writable layer takes minutes).
const requestTimeout = 10 * time.Minute

// handler answers one parsed request.
type handler func(ctx context.Context, r *Request) (*Response, error)

// controlServer answers requests on one control socket until stopped.
type controlServer struct {
	l      net.Listener
	h      handler
	kind   func(error) string
	logf   func(string, ...any)
	euid   int
	vol    string // the volume of a per-volume socket, or ""
	wg     sync.WaitGroup
	cancel context.CancelFunc
}

// listenControl creates the socket at path (0600, via unixsock) and
// serves h on it.
func listenControl(path, vol string, h handler, kind func(error) string, logf func(string, ...any)) (*controlServer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	l, err := unixsock.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &controlServer{l: l, h: h, kind: kind, logf: logf, euid: os.Geteuid(), cancel: cancel, vol: vol}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(ctx, c)
			}()
		}
	}()
	return s, nil
}

// stop closes the socket (removing it) and waits for the requests in
// flight.
func (s *controlServer) stop() {
	s.l.Close()
	s.cancel()
	s.wg.Wait()
}

func (s *controlServer) serve(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(requestTimeout))
	enc := json.NewEncoder(c)
	if err := checkPeer(c, s.euid); err != nil {
		s.logf("control: %v", err)
		enc.Encode(Response{Error: err.Error(), Kind: "permission"})
		return
	}
	// One JSON value, read without waiting for the client to shut down
	// its side (clients before the daemon did not).
	var raw json.RawMessage
	err := json.NewDecoder(io.LimitReader(c, MaxRequest+1)).Decode(&raw)
	var req *Request
	if err != nil {
		err = fmt.Errorf("%w: %v", ErrBadRequest, err)
	} else {
		req, err = parseRequest(raw, s.vol)
	}
	var resp *Response
	if err == nil {
		resp, err = s.h(ctx, req)
	}
	if resp == nil {
		resp = &Response{}
	}
	if err != nil {
		resp = &Response{Error: err.Error(), Kind: s.kind(err)}
	}
	resp.PID = os.Getpid()
	enc.Encode(resp)
}

// checkPeer refuses a connection whose peer (SO_PEERCRED) is not euid.
func checkPeer(c net.Conn, euid int) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("%w: not a unix connection", ErrPeer)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("%w: SO_PEERCRED: %v", ErrPeer, cerr)
	}
	if int(cred.Uid) != euid {
		return fmt.Errorf("%w (uid %d, pid %d; the daemon runs as uid %d)", ErrPeer, cred.Uid, cred.Pid, euid)
	}
	return nil
}

// Client talks to the daemon of one root.
type Client struct {
	Root string
}

// Do sends one request to the daemon and returns its response. It fails
// with ErrNotRunning (wrapped) when no daemon listens, and with a
// *RemoteError when the daemon answered with an error.
func (c *Client) Do(ctx context.Context, r *Request) (*Response, error) {
	return ask(ctx, SocketPath(c.Root), "the obdvol daemon", r)
}

// Running reports whether a daemon answers on the root's control socket.
func (c *Client) Running(ctx context.Context) bool {
	_, err := c.Do(ctx, &Request{Op: OpStatus})
	return !errors.Is(err, ErrNotRunning)
}

// AskVolume sends one request to the process that owns vol (the daemon
// or a foreground serve), through --root/run/<vol>.sock. It fails with
// ErrNotRunning (wrapped) when nobody listens there.
func AskVolume(ctx context.Context, root, vol string, r *Request) (*Response, error) {
	return ask(ctx, VolumeSocketPath(root, vol), "the server of volume "+vol, r)
}

func ask(ctx context.Context, path, who string, r *Request) (*Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (%v)", who, ErrNotRunning, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	_, werr := c.Write(b)
	if werr == nil {
		c.(*net.UnixConn).CloseWrite() // the request ends here
	}
	// Even when the write failed: a server that refused the connection
	// (another user's) answered and closed before reading it.
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if werr != nil {
			err = werr
		}
		return nil, fmt.Errorf("%s: %w", who, err)
	}
	if resp.Error != "" {
		return &resp, &RemoteError{Msg: resp.Error, Kind: resp.Kind}
	}
	return &resp, nil
}
