package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServeOptions tune Serve.
type ServeOptions struct {
	// AllowRemote lets the endpoint listen on an address other than
	// loopback (all interfaces included). Metrics name every volume on
	// the host; without it such an address is refused (ErrNotLoopback).
	AllowRemote bool
}

// Server is a running metrics endpoint: GET /metrics answers in the
// Prometheus text format (or what the scraper negotiates); every other
// path is 404.
type Server struct {
	srv  *http.Server
	addr string
	done chan struct{} // closed when the accept loop has returned
	err  error         // the accept loop's error, set before done

	closeOnce sync.Once
	closeErr  error
}

// Serve listens on addr (host:port; port 0 picks a free one, see Addr)
// and serves g's metrics until ctx ends or Close. A malformed addr is an
// error wrapping ErrBadAddress; one that is not loopback, unless
// o.AllowRemote, wraps ErrNotLoopback (checked before listening for an IP
// or an empty host, and after for a host name, against the address bound).
func Serve(ctx context.Context, addr string, g prometheus.Gatherer, o ServeOptions) (*Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrBadAddress, addr, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || strconv.FormatUint(p, 10) != port {
		return nil, fmt.Errorf("%w %q: port %q is not a number from 0 to 65535", ErrBadAddress, addr, port)
	}
	if !o.AllowRemote {
		if host == "" {
			return nil, fmt.Errorf("%w: %q listens on every interface (use 127.0.0.1:%s, or allow remote scrapes)", ErrNotLoopback, addr, port)
		}
		if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() {
			return nil, fmt.Errorf("%w: %q (use 127.0.0.1:%s, or allow remote scrapes)", ErrNotLoopback, addr, port)
		}
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	if ta, ok := l.Addr().(*net.TCPAddr); !o.AllowRemote && (!ok || !ta.IP.IsLoopback()) {
		l.Close()
		return nil, fmt.Errorf("%w: %q resolves to %s (use 127.0.0.1:%s, or allow remote scrapes)", ErrNotLoopback, addr, l.Addr(), port)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	s := &Server{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute},
		addr: l.Addr().String(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.done:
		}
	}()
	return s, nil
}

// Addr is the address the server listens on (with the port it picked).
func (s *Server) Addr() string { return s.addr }

// Close stops the server: the listener at once, scrapes in progress
// within 5 seconds. It returns why serving stopped early, if it did.
// Calling it again returns the same.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := s.srv.Shutdown(ctx)
		<-s.done
		s.closeErr = errors.Join(s.err, err)
	})
	return s.closeErr
}
