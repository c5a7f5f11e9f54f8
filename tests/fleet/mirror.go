package fleet

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Mirror is a pull-through mirror: Debian's docker-registry in proxy mode
// (proxy: remoteurl:) in front of an origin registry. It serves the
// origin's repositories under the same names, fetching a blob from the
// origin on its first request and from its own storage after that.
// (tests/regtest may gain the same; this one keeps the fleet harness
// independent of it.)
type Mirror struct {
	Dir  string
	Addr string // 127.0.0.1:port
	cmd  *exec.Cmd
	log  *os.File
}

// StartMirror starts a mirror of remote (http://host:port) with its storage
// under dir; Stop ends it.
func StartMirror(dir, remote string) (*Mirror, error) {
	if _, err := exec.LookPath("docker-registry"); err != nil {
		return nil, fmt.Errorf("docker-registry not installed: run make deps (apt-get install docker-registry)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
proxy:
  remoteurl: %s
`, filepath.Join(dir, "storage"), addr, remote)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	m := &Mirror{Dir: dir, Addr: addr}
	m.log, err = os.OpenFile(filepath.Join(dir, "registry.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	m.cmd = exec.Command("docker-registry", "serve", filepath.Join(dir, "config.yml"))
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		m.log.Close()
		return nil, err
	}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return m, nil
		}
	}
	m.Stop()
	return nil, fmt.Errorf("mirror did not answer on %s (log %s)", addr, m.log.Name())
}

// Stop kills the mirror.
func (m *Mirror) Stop() {
	if m.cmd != nil && m.cmd.Process != nil {
		m.cmd.Process.Kill()
		m.cmd.Wait()
		m.cmd = nil
	}
	if m.log != nil {
		m.log.Close()
		m.log = nil
	}
}
