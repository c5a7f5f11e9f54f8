package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/obdvol/obdvol/volume"
)

const nbdStripe = 64 << 10

// nbdServer is one running NBD export under test.
type nbdServer struct {
	name, uri string
	srv       *exec.Cmd
}

// startServer starts a server that dies with the bench, even when a
// failed check exits before the deferred stops run.
func startServer(srv *exec.Cmd) {
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	check(srv.Start())
}

func (n *nbdServer) stop() {
	n.srv.Process.Signal(os.Interrupt)
	n.srv.Wait()
}

// nbdBench serves the same data with the same fio nbd client from: obdvol
// at chain depth 1, 16, 64; qemu-nbd over qcow2 backing chains of depth
// 1, 16, 64; nbdkit's memory plugin (the protocol limit). Stripe s (64 KiB)
// holds pattern s%64 (half random, half text) and lives in layer s%depth,
// so every depth has identical content. All seven servers run at once and
// fio visits them in interleaved rounds.
func nbdBench(work string, size uint64, obdvol string, secs int) {
	fmt.Printf("== NBD read path, %d MiB, fio --ioengine=nbd: randread 4K iodepth 16 (%ds), sequential read 1M (1s); %s\n", size>>20, secs, roundsNote())
	for _, t := range []string{"qemu-img", "qemu-io", "qemu-nbd", "nbdkit", "fio"} {
		if _, err := exec.LookPath(t); err != nil {
			fmt.Printf("%s not installed (scripts/deps.sh bench): skipping the NBD bench\n\n", t)
			return
		}
	}
	pats := make([][]byte, 64)
	patFiles := make([]string, 64)
	r := rand.New(rand.NewSource(11))
	for i := range pats {
		p := make([]byte, nbdStripe)
		for b := 0; b < nbdStripe; b += bs {
			r.Read(p[b : b+bs/2])
			copy(p[b+bs/2:b+bs], strings.Repeat("obdvol nbd bench ", bs/32))
		}
		pats[i] = p
		patFiles[i] = filepath.Join(mkdir(work, "pat"), fmt.Sprintf("p%02d", i))
		check(os.WriteFile(patFiles[i], p, 0o600))
	}
	var servers []*nbdServer
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	for _, depth := range []int{1, 16, 64} {
		servers = append(servers, nbdObdvol(work, obdvol, size, depth, pats))
	}
	var top string
	for _, depth := range []int{1, 16, 64} {
		s, img := nbdQcow2(work, size, depth, patFiles)
		servers = append(servers, s)
		if depth == 1 {
			top = img
		}
	}
	sock := filepath.Join(mkdir(work, "nbdkit"), "s.sock")
	srv := exec.Command("nbdkit", "-f", "-U", sock, "memory", fmt.Sprint(size))
	startServer(srv)
	waitSock(sock)
	kit := &nbdServer{"nbdkit memory", "nbd+unix:///?socket=" + sock, srv}
	servers = append(servers, kit)
	tool("qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", top, kit.uri)

	iops := map[string]*series{}
	var rnd, seq []*series
	for _, s := range servers {
		uri := s.uri
		iops[s.name] = measure(s.name, "IOPS", func() float64 { return fioRun(uri, "randread", "4k", secs).iops })
		rnd = append(rnd, iops[s.name])
		seq = append(seq, measure(s.name, "MB/s", func() float64 { return fioRun(uri, "read", "1M", 1).bw / 1e6 }))
	}
	// Compared servers run next to each other (the last and the first
	// too), so both sides of a ratio see the same moment of the machine.
	var order []*series
	for _, n := range []string{"obdvol depth 64", "obdvol depth 1", "qemu-nbd qcow2 depth 1", "nbdkit memory",
		"obdvol depth 16", "qemu-nbd qcow2 depth 16", "qemu-nbd qcow2 depth 64"} {
		order = append(order, iops[n])
	}
	interleave(order...)
	interleave(seq...)
	fmt.Println("  random 4K reads:")
	printSeries(rnd...)
	fmt.Println("  sequential 1M reads:")
	printSeries(seq...)
	printRatio(iops["obdvol depth 64"], iops["obdvol depth 1"], atLeast(0.9))
	printRatio(iops["obdvol depth 1"], iops["qemu-nbd qcow2 depth 1"], atLeast(1.0))
	printRatio(iops["obdvol depth 64"], iops["qemu-nbd qcow2 depth 64"], atLeast(2.0))
	printRatio(iops["obdvol depth 1"], iops["nbdkit memory"], atLeast(0.6))
	fmt.Println()
}

// nbdObdvol builds a chain of the given depth and serves it with obdvol
// serve --foreground: the bench owns the server process (and its CPU
// profile), and no host daemon is left behind.
func nbdObdvol(work, obdvol string, size uint64, depth int, pats [][]byte) *nbdServer {
	root := filepath.Join(work, fmt.Sprintf("nbd-obdvol-%d", depth))
	e := newEnv(root, 32<<20)
	_, err := e.mgr.Create("v", size, volume.CreateOptions{})
	check(err)
	v, err := e.mgr.Open("v")
	check(err)
	stripes := int(size / nbdStripe)
	for k := 0; k < depth; k++ {
		for s := k; s < stripes; s += depth {
			_, err := v.WriteAt(pats[s%64], int64(s)*nbdStripe)
			check(err)
		}
		check(v.Flush())
		_, err := v.Snapshot(context.Background(), fmt.Sprintf("l%d", k))
		check(err)
	}
	v.Close()
	e.mgr.Close()
	sock := filepath.Join(root, "s.sock")
	srv := exec.Command(obdvol, "--root", root, "--no-progress", "--cpuprofile", filepath.Join(work, fmt.Sprintf("serve-%d.prof", depth)), "serve", "v", "--foreground", "--nbd", "unix:"+sock)
	startServer(srv)
	waitSock(sock)
	return &nbdServer{fmt.Sprintf("obdvol depth %d", depth), "nbd+unix:///v?socket=" + sock, srv}
}

// nbdQcow2 builds a qcow2 backing chain of the given depth with the same
// content and serves its top with qemu-nbd; it returns the top image too.
func nbdQcow2(work string, size uint64, depth int, patFiles []string) (*nbdServer, string) {
	dir := mkdir(work, fmt.Sprintf("nbd-qcow2-%d", depth))
	stripes := int(size / nbdStripe)
	prev := ""
	for k := 0; k < depth; k++ {
		img := filepath.Join(dir, fmt.Sprintf("l%d.qcow2", k))
		args := []string{"create", "-q", "-f", "qcow2", img, fmt.Sprint(size)}
		if prev != "" {
			args = []string{"create", "-q", "-f", "qcow2", "-b", prev, "-F", "qcow2", img}
		}
		tool("qemu-img", args...)
		qa := []string{"-f", "qcow2"}
		for s := k; s < stripes; s += depth {
			qa = append(qa, "-c", fmt.Sprintf("write -q -s %s %d %d", patFiles[s%64], s*nbdStripe, nbdStripe))
		}
		tool("qemu-io", append(qa, img)...)
		prev = img
	}
	sock := filepath.Join(dir, "s.sock")
	srv := exec.Command("qemu-nbd", "-r", "-t", "-f", "qcow2", "-k", sock, prev)
	startServer(srv)
	waitSock(sock)
	return &nbdServer{fmt.Sprintf("qemu-nbd qcow2 depth %d", depth), "nbd+unix:///?socket=" + sock, srv}, prev
}

func tool(name string, args ...string) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		check(fmt.Errorf("%s: %v\n%s", name, err, out))
	}
}

func waitSock(path string) {
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	check(fmt.Errorf("nothing listens on %s", path))
}

type fioResult struct{ iops, bw float64 }

func fioRun(uri, rw, bsz string, secs int) fioResult {
	out, err := exec.Command("fio", "--name=b", "--ioengine=nbd", "--uri="+uri, "--rw="+rw, "--bs="+bsz,
		"--iodepth=16", fmt.Sprintf("--runtime=%d", secs), "--time_based", "--output-format=json").Output()
	if err != nil {
		check(fmt.Errorf("fio %s %s on %s: %v\n%s", rw, bsz, uri, err, out))
	}
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	var j struct {
		Jobs []struct {
			Read struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	check(json.Unmarshal(out, &j))
	if len(j.Jobs) == 0 {
		check(fmt.Errorf("fio printed no job"))
	}
	return fioResult{j.Jobs[0].Read.IOPS, j.Jobs[0].Read.BW}
}
