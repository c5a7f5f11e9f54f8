// Package regtest runs a real registry (Debian's docker-registry, the CNCF
// distribution registry) on 127.0.0.1 for tests and the demo.
package regtest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Registry is a running docker-registry process.
type Registry struct {
	Dir  string // storage root and config live here
	Addr string // 127.0.0.1:port
	cmd  *exec.Cmd
	log  *os.File
}

// Start starts a registry on a free loopback port with storage in a temp
// dir, and stops it when the test ends. A missing binary fails the test.
func Start(t testing.TB) *Registry {
	t.Helper()
	r, err := StartIn(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// StartMirror starts a pull-through mirror of the registry at origin
// (host:port, plain HTTP): docker-registry in proxy mode (proxy: remoteurl:),
// which serves what it has cached and fetches the rest from the origin
// (whole blobs on a miss, even for a range request). It stops when the
// test ends.
func StartMirror(t testing.TB, origin string) *Registry {
	t.Helper()
	r, err := StartMirrorIn(t.TempDir(), origin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// StartMirrorIn starts a pull-through mirror of origin with its storage
// and config under dir.
func StartMirrorIn(dir, origin string) (*Registry, error) {
	return startIn(dir, fmt.Sprintf("proxy:\n  remoteurl: http://%s\n", origin))
}

// StartMirrorTLS starts a pull-through mirror of origin (plain HTTP) that
// serves HTTPS with cert and key (PEM files) and, with clientCA set, asks
// every client for a certificate signed by that CA (mutual TLS: a client
// without one fails the handshake). It stops when the test ends.
func StartMirrorTLS(t testing.TB, origin, cert, key, clientCA string) *Registry {
	t.Helper()
	extra := fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", cert, key)
	if clientCA != "" {
		extra += fmt.Sprintf("    clientcas:\n      - %s\n", clientCA)
	}
	r, err := startIn(t.TempDir(), extra+fmt.Sprintf("proxy:\n  remoteurl: http://%s\n", origin))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// StartIn starts a registry with its storage and config under dir.
func StartIn(dir string) (*Registry, error) { return startIn(dir, "") }

func startIn(dir, extra string) (*Registry, error) {
	if _, err := exec.LookPath("docker-registry"); err != nil {
		return nil, fmt.Errorf("docker-registry not installed: run make deps (apt-get install docker-registry)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	r := &Registry{Dir: dir, Addr: addr}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%s`, filepath.Join(dir, "storage"), addr, extra)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return r, r.start()
}

func (r *Registry) start() error {
	var err error
	r.log, err = os.OpenFile(filepath.Join(r.Dir, "registry.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	r.cmd = exec.Command("docker-registry", "serve", filepath.Join(r.Dir, "config.yml"))
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + r.Addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.Stop()
	return fmt.Errorf("docker-registry did not answer on %s (log: %s)", r.Addr, r.log.Name())
}

// Stop kills the registry (as a crash would).
func (r *Registry) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
	if r.log != nil {
		r.log.Close()
		r.log = nil
	}
}

// Restart starts the registry again on the same port and storage.
func (r *Registry) Restart() error {
	r.Stop()
	return r.start()
}

// BlobPath is where the registry stores blob digest ("sha256:<hex>").
func (r *Registry) BlobPath(digest string) string {
	hex := digest[len("sha256:"):]
	return filepath.Join(r.Dir, "storage", "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
}

// Log returns the registry's log so far.
func (r *Registry) Log() string {
	b, _ := os.ReadFile(filepath.Join(r.Dir, "registry.log"))
	return string(b)
}
