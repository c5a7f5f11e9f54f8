package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obdvol/obdvol/daemon"
)

// daemonProc is an obdvol daemon process a test started (as its child,
// or detached by a command that started it).
type daemonProc struct {
	t    *testing.T
	pid  int
	cmd  *exec.Cmd // nil when detached
	done chan error
}

// startDaemon runs obdvol daemon on h's root as a child of the test and
// waits until its control socket answers.
func (h *cliHost) startDaemon(args ...string) *daemonProc {
	h.t.Helper()
	cmd := exec.Command(obdvolBin, append([]string{"--root", h.root, "--no-progress", "daemon", "--dev-dir", filepath.Join(h.root, "dev")}, args...)...)
	cmd.Env = cliEnv()
	var logb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logb, &logb
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	d := &daemonProc{t: h.t, pid: cmd.Process.Pid, cmd: cmd, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	h.t.Cleanup(func() {
		d.stop(syscall.SIGKILL)
		if strings.Contains(logb.String(), "DATA RACE") {
			h.t.Errorf("the daemon reports a data race:\n%s", logb.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !(&daemon.Client{Root: h.root}).Running(context.Background()) {
		select {
		case err := <-d.done:
			d.done <- err
			h.t.Fatalf("the daemon exited (%v):\n%s", err, logb.String())
		default:
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("the daemon did not answer in 60s:\n%s", logb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return d
}

// detachedDaemon is the daemon a command started on h's root; it is
// killed when the test ends.
func (h *cliHost) detachedDaemon() *daemonProc {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.root, "run", "daemon.lock"))
	if err != nil {
		h.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		h.t.Fatal(err)
	}
	d := &daemonProc{t: h.t, pid: pid}
	h.t.Cleanup(func() { d.stop(syscall.SIGKILL) })
	return d
}

// stop sends sig and waits for the process to be gone.
func (d *daemonProc) stop(sig syscall.Signal) {
	if d.pid == 0 {
		return
	}
	syscall.Kill(d.pid, sig)
	if d.cmd != nil {
		select {
		case <-d.done:
		case <-time.After(60 * time.Second):
			d.t.Errorf("daemon %d did not exit on %v", d.pid, sig)
		}
	} else {
		for i := 0; i < 3000 && syscall.Kill(d.pid, 0) == nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	d.pid = 0
}

func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// serve without --foreground starts a daemon detached and returns; real
// NBD clients read and write through it; snapshot, info and list reach
// it; a second daemon on the root is refused; deactivate stops the
// export and a later serve finds the same daemon.
func TestDaemonServeThroughCLI(t *testing.T) {
	needTool(t, "qemu-io", "nbdinfo")
	h := newCLI(t)
	h.ok("create", "v", "--size", "4M")
	h.ok("create", "w", "--size", "1M")
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	m := h.json("serve", "v", "--nbd", "unix:"+sock)
	d := h.detachedDaemon()
	if pid := jint(t, m, "pid"); int(pid) != d.pid {
		t.Fatalf("serve reports pid %d, the daemon lock names %d", pid, d.pid)
	}
	uri := jstrs(t, m, "serving")[0]
	for _, p := range []string{daemon.SocketPath(h.root), daemon.VolumeSocketPath(h.root, "v"), sock} {
		if fi, err := os.Lstat(p); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
			t.Errorf("%s: %v %v, want a socket with mode 0600", p, fi, err)
		}
	}
	qemu := func(cmds ...string) {
		t.Helper()
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out := tool(t, "qemu-io", append(args, uri)...)
		if strings.Contains(out, "failed") {
			t.Fatalf("qemu-io %v:\n%s", cmds, out)
		}
	}
	qemu("write -P 0x5a 64k 128k", "flush")
	if out := tool(t, "nbdinfo", "--size", uri); strings.TrimSpace(out) != "4194304" {
		t.Errorf("nbdinfo --size: %q", out)
	}
	// The snapshot is sealed inside the daemon.
	h.ok("snapshot", "v@s1")
	if got := h.exportFile("v@s1"); !bytes.Equal(got[64<<10:192<<10], bytes.Repeat([]byte{0x5a}, 128<<10)) {
		t.Error("the snapshot taken through the daemon lacks the write")
	}
	info := h.json("info", "v")
	if jget(t, info, "volume", "active") != true || !strings.Contains(jstr(t, info, "volume", "device", "path"), sock) {
		t.Errorf("info while served: %v", info)
	}
	if r := h.ok("list"); !strings.Contains(r.stdout, sock) {
		t.Errorf("list while served:\n%s", r.stdout)
	}
	// One daemon per root.
	r := h.fails(1, []string{"already running", fmt.Sprintf("pid %d", d.pid)}, "daemon")
	_ = r
	h.ok("deactivate", "v")
	if r := h.ok("list"); strings.Contains(r.stdout, sock) {
		t.Errorf("list after deactivate:\n%s", r.stdout)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the export's socket stayed after deactivate: %v", err)
	}
	h.fails(1, []string{"not active"}, "deactivate", "v")
	m = h.json("serve", "w", "v", "--nbd", "unix:"+sock)
	if int(jint(t, m, "pid")) != d.pid {
		t.Errorf("the second serve started another daemon")
	}
	// An export of a volume already exported is refused.
	h.fails(1, []string{"already active"}, "serve", "v", "--nbd", "unix:"+sock+"2")
	qemu("read -P 0x5a 64k 128k")
}

// kill -9 of the daemon with persistent NBD exports; started again, the
// exports are back and what was written and flushed before the kill
// reads back; a one-off export is not back. A clean stop (SIGTERM) and a
// new daemon (what a reboot looks like to the catalogue) do the same.
func TestDaemonKill9AndRestart(t *testing.T) {
	needTool(t, "qemu-io")
	h := newCLI(t)
	for _, v := range []string{"a", "b", "c"} {
		h.ok("create", v, "--size", "4M")
	}
	d := h.startDaemon()
	sock, once := filepath.Join(t.TempDir(), "p.sock"), filepath.Join(t.TempDir(), "o.sock")
	uris := jstrs(t, h.json("serve", "a", "b", "--nbd", "unix:"+sock, "--persistent"), "serving")
	h.json("serve", "c", "--nbd", "unix:"+once)
	io := func(uri string, cmds ...string) string {
		t.Helper()
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out, err := exec.Command("qemu-io", append(args, uri)...).CombinedOutput()
		if err != nil || strings.Contains(string(out), "failed") {
			t.Fatalf("qemu-io %v on %s: %v\n%s", cmds, uri, err, out)
		}
		return string(out)
	}
	io(uris[0], "write -P 0xa7 0 1M", "flush")
	io(uris[1], "write -P 0xb7 2M 1M", "flush")

	d.stop(syscall.SIGKILL)
	if (&daemon.Client{Root: h.root}).Running(context.Background()) {
		t.Fatal("precondition: the killed daemon still answers")
	}
	d = h.startDaemon()
	io(uris[0], "read -P 0xa7 0 1M")
	io(uris[1], "read -P 0xb7 2M 1M")
	if _, err := os.Lstat(once); err == nil {
		if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4k", "nbd+unix:///c?socket="+once).CombinedOutput(); err == nil && !strings.Contains(string(out), "failed") {
			t.Errorf("the one-off export of c is back after the crash:\n%s", out)
		}
	}
	l := h.json("list")
	for _, v := range l["volumes"].([]any) {
		name, active := jstr(t, v, "name"), jget(t, v, "active") == true
		if want := name != "c"; active != want {
			t.Errorf("after restart, volume %s active=%v, want %v", name, active, want)
		}
	}

	// Clean stop, new daemon: the same.
	io(uris[0], "write -P 0xa8 1M 64k", "flush")
	d.stop(syscall.SIGTERM)
	if r := h.ok("info", "a"); strings.Contains(r.stdout, "device:") || !strings.Contains(r.stdout, "activation: persistent") {
		t.Errorf("info after a clean stop:\n%s", r.stdout)
	}
	h.startDaemon()
	io(uris[0], "read -P 0xa7 0 1M", "read -P 0xa8 1M 64k")
	io(uris[1], "read -P 0xb7 2M 1M")
	// Deactivated, a volume is not brought back.
	h.ok("deactivate", "b")
	if r := h.ok("info", "b"); strings.Contains(r.stdout, "activation:") {
		t.Errorf("b keeps its activation after deactivate:\n%s", r.stdout)
	}
}

// 16 clones of one golden exported by one daemon: each reads back
// byte-exact, and the daemon's memory with 16 exports stays within
// 1.5 x its memory with one plus 2 MiB per export (one chunk cache, one
// index of the golden's chain).
func TestDaemon16Clones(t *testing.T) {
	needTool(t, "qemu-img")
	h := newCLI(t)
	const size = 16 << 20
	rng := rand.New(rand.NewSource(16))
	img := randomImage(rng, size, func(b int) bool { return b%7 == 0 })
	h.ok("create", "golden", "--size", "16M")
	h.ok("import", "golden", writeFile(t, "golden.img", img))
	h.ok("snapshot", "golden@g")
	for i := 0; i < 16; i++ {
		h.ok("create", fmt.Sprintf("c%d", i), "--from", "golden@g")
	}
	d := h.startDaemon("--cache-size", "64M")
	readAll := func(uri string) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "out.raw")
		tool(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		sameBytes(t, uri, got, img)
		os.Remove(out)
	}
	dir := t.TempDir()
	first := jstrs(t, h.json("serve", "c0", "--nbd", "unix:"+filepath.Join(dir, "c0.sock")), "serving")
	readAll(first[0])
	readAll(first[0])
	rss1 := rssKiB(t, d.pid)
	var rest []string
	for i := 1; i < 16; i++ {
		rest = append(rest, fmt.Sprintf("c%d", i))
	}
	uris := jstrs(t, h.json(append([]string{"serve", "--nbd", "unix:" + filepath.Join(dir, "all.sock")}, rest...)...), "serving")
	for _, u := range uris {
		readAll(u)
	}
	readAll(first[0])
	rss16 := rssKiB(t, d.pid)
	limit := rss1*3/2 + 16*2048
	t.Logf("daemon RSS: %d KiB with 1 export, %d KiB with 16 (limit 1.5 x RSS(1) + 16 x 2 MiB = %d KiB; race detector: %v)",
		rss1, rss16, limit, raceEnabled())
	if rss16 > limit {
		t.Errorf("RSS with 16 exports %d KiB > %d KiB", rss16, limit)
	}
}

// Two commands that each find no daemon and start one at the same
// moment: one daemon wins the root's lock, both commands are served by
// it.
func TestDaemonConcurrentStart(t *testing.T) {
	h := newCLI(t)
	h.ok("create", "a", "--size", "1M")
	h.ok("create", "b", "--size", "1M")
	dir := t.TempDir()
	pids := make(chan int64, 2)
	for _, v := range []string{"a", "b"} {
		go func(v string) {
			r := h.run("--json", "serve", v, "--nbd", "unix:"+filepath.Join(dir, v+".sock"))
			if r.code != 0 {
				t.Errorf("serve %s: %s", v, r)
				pids <- 0
				return
			}
			pids <- jint(t, decodeOne(t, r), "pid")
		}(v)
	}
	p1, p2 := <-pids, <-pids
	d := h.detachedDaemon()
	if p1 != p2 || int(p1) != d.pid {
		t.Fatalf("served by pids %d and %d, the daemon lock names %d", p1, p2, d.pid)
	}
}

// Flags that cannot work are refused before anything starts.
func TestDaemonUsageErrors(t *testing.T) {
	h := newCLI(t)
	h.ok("create", "v", "--size", "1M")
	h.fails(2, []string{"--cache-size"}, "daemon", "--cache-size", "1K")
	h.fails(2, []string{"--persistent is for the daemon"}, "serve", "v", "--nbd", "unix:/tmp/x.sock", "--foreground", "--persistent")
	h.fails(2, []string{"--record-prefetch needs --foreground"}, "serve", "v", "--nbd", "unix:/tmp/x.sock", "--record-prefetch", "/tmp/p")
	h.fails(2, []string{"--queues"}, "activate", "v", "--queues", "100000")
	// A missing volume starts no daemon.
	h.fails(1, []string{"not found"}, "serve", "nosuch", "--nbd", "unix:"+filepath.Join(t.TempDir(), "s"))
	if _, err := os.Stat(filepath.Join(h.root, "run", "daemon.lock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a daemon was started for a missing volume (%v)", err)
	}
}
