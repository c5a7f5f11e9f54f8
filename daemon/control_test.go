package daemon

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A control connection from another uid is refused by SO_PEERCRED, even
// when the socket's mode would let it connect.
func TestPeerRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the client runs as uid 65534")
	}
	dir, err := os.MkdirTemp("", "obdvol-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "root")
	m := newManager(t, root)
	startHost(t, root, m)
	// Open every door but the credential check.
	for _, p := range []string{dir, root, filepath.Join(root, "run")} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(SocketPath(root), 0o666); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(out, in)
	in.Close()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	run := func(uid uint32) string {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), clientEnv+"="+SocketPath(root))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid %d: %v\n%s", uid, err, b)
		}
		return string(b)
	}
	if got := run(65534); !strings.Contains(got, "refused") || !strings.Contains(got, "uid 65534") {
		t.Errorf("client as uid 65534: %q, want a refusal by uid", got)
	}
	// The same binary as root is answered (the check is the uid).
	if got := run(0); !strings.Contains(got, "<nil>") {
		t.Errorf("client as root: %q, want an answer", got)
	}
}

func TestParseRequest(t *testing.T) {
	good := []string{
		`{"op":"status"}`,
		`{"op":"activate","volume":"v","queues":4,"depth":128,"persistent":true}`,
		`{"op":"serve-nbd","volumes":["a","b"],"listen":"unix:/tmp/x.sock"}`,
		`{"op":"snapshot","volume":"v","snapshot":"s1"}`,
		`{"op":"resize","volume":"v","size":1073741824}`,
	}
	for _, s := range good {
		if _, err := ParseRequest([]byte(s)); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	bad := []string{
		``, `{}`, `{"op":"format"}`, `{"op":"activate"}`, `{"op":"activate","volume":"../etc"}`,
		`{"op":"activate","volume":"v","queues":-1}`, `{"op":"activate","volume":"v","depth":100000}`,
		`{"op":"serve-nbd","volumes":["a","a"],"listen":"unix:/x"}`, `{"op":"serve-nbd","volumes":["a"],"listen":"tcp:8.8.8.8:1"}`,
		`{"op":"snapshot","volume":"v"}`, `{"op":"status"}{"op":"status"}`, `{"op":"status","bogus":1}`,
		`{"op":"serve-nbd","volumes":[],"listen":"unix:/x"}`,
		`{"op":"resize","volume":"v"}`, `{"op":"resize","size":4096}`, `{"op":"resize","volume":"v","size":-1}`,
	}
	for _, s := range bad {
		if _, err := ParseRequest([]byte(s)); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s: %v, want ErrBadRequest", s, err)
		}
	}
	// A volume's socket answers about that volume only.
	if r, err := parseRequest([]byte(`{"op":"snapshot","snapshot":"s"}`), "v"); err != nil || r.Volume != "v" {
		t.Errorf("old-style snapshot request on v's socket: %+v, %v", r, err)
	}
	if r, err := parseRequest([]byte(`{"op":"resize","size":8192}`), "v"); err != nil || r.Volume != "v" {
		t.Errorf("resize on v's socket: %+v, %v", r, err)
	}
	for _, s := range []string{`{"op":"snapshot","volume":"w","snapshot":"s"}`, `{"op":"deactivate"}`} {
		if _, err := parseRequest([]byte(s), "v"); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s on v's socket: %v", s, err)
		}
	}
}

// FuzzControlRequest: the control request parser never panics, and what
// it accepts passes Validate and re-encodes to a request it accepts.
func FuzzControlRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"status"}`, `{"op":"activate","volume":"v","queues":4}`,
		`{"op":"serve-nbd","volumes":["a"],"listen":"tcp:127.0.0.1:0"}`,
		`{"op":"snapshot","volume":"v","snapshot":"s"}`, `{"op":"deactivate","volume":"x"}`, `[`, `null`,
		`{"op":"resize","volume":"v","size":8192}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error not wrapping ErrBadRequest: %v", err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted then invalid: %v", err)
		}
		again, _ := json.Marshal(r)
		if _, err := ParseRequest(again); err != nil {
			t.Fatalf("re-encoded request refused: %v (%s)", err, again)
		}
		for _, v := range []string{"v", "w"} {
			parseRequest(b, v)
		}
	})
}
