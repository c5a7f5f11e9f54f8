package metrics_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"

	"github.com/obdvol/obdvol/metrics"
)

// Addresses that are not loopback are refused (metrics name every volume
// on the host) unless allowed; malformed ones are refused clearly.
func TestServeAddresses(t *testing.T) {
	c := metrics.New()
	ctx := context.Background()
	for addr, want := range map[string]error{
		":0":              metrics.ErrNotLoopback,
		"0.0.0.0:0":       metrics.ErrNotLoopback,
		"[::]:0":          metrics.ErrNotLoopback,
		"192.0.2.1:9863":  metrics.ErrNotLoopback,
		"127.0.0.1":       metrics.ErrBadAddress,
		"127.0.0.1:99999": metrics.ErrBadAddress,
		"127.0.0.1:http":  metrics.ErrBadAddress,
		"127.0.0.1:-1":    metrics.ErrBadAddress,
		"":                metrics.ErrBadAddress,
	} {
		srv, err := metrics.Serve(ctx, addr, c, metrics.ServeOptions{})
		if !errors.Is(err, want) {
			if srv != nil {
				srv.Close()
			}
			t.Errorf("Serve(%q): %v, want %v", addr, err, want)
		}
	}
	for _, addr := range []string{"localhost:0", "127.0.0.1:0", "127.1.2.3:0"} {
		srv, err := metrics.Serve(ctx, addr, c, metrics.ServeOptions{})
		if err != nil {
			t.Errorf("Serve(%q): %v", addr, err)
			continue
		}
		scrape(t, srv.Addr())
		srv.Close()
	}
	srv, err := metrics.Serve(ctx, "0.0.0.0:0", c, metrics.ServeOptions{AllowRemote: true})
	if err != nil {
		t.Fatalf("Serve on every interface, allowed: %v", err)
	}
	_, port, _ := net.SplitHostPort(srv.Addr())
	scrape(t, "127.0.0.1:"+port)
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
}

// Only /metrics is served; the server stops when its context ends, and a
// busy port is a clear error.
func TestServeLifecycle(t *testing.T) {
	c := metrics.New()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := metrics.Serve(ctx, "127.0.0.1:0", c, metrics.ServeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + srv.Addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /: %s, want 404", resp.Status)
	}
	if _, err := metrics.Serve(context.Background(), srv.Addr(), c, metrics.ServeOptions{}); err == nil {
		t.Fatalf("a second server listened on %s", srv.Addr())
	}
	cancel()
	if err := srv.Close(); err != nil { // waits for the stop ctx started
		t.Fatal(err)
	}
	if resp, err := http.Get("http://" + srv.Addr() + "/metrics"); err == nil {
		resp.Body.Close()
		t.Fatal("the server answered after its context ended")
	}
}
