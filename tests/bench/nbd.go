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
	"time"

	"github.com/obdvol/obdvol/volume"
)

// nbdBench serves the same data with the same fio nbd client from: obdvol
// at chain depth 1, 16, 64; qemu-nbd over qcow2 backing chains of depth
// 1, 16, 64; nbdkit's memory plugin (the protocol limit). Stripe s (64 KiB)
// holds pattern s%64 (half random, half text) and lives in layer s%depth,
// so every depth has identical content.
func nbdBench(work string, size uint64, obdvol string, secs int) {
	const stripe = 64 << 10
	fmt.Printf("== NBD read path, %d MiB, fio --ioengine=nbd: randread 4K iodepth 16 (%ds), sequential read 1M\n", size>>20, secs)
	for _, t := range []string{"qemu-img", "qemu-io", "qemu-nbd", "nbdkit", "fio"} {
		if _, err := exec.LookPath(t); err != nil {
			fmt.Printf("%s not installed (scripts/deps.sh bench): skipping the NBD bench\n", t)
			return
		}
	}
	pats := make([][]byte, 64)
	patFiles := make([]string, 64)
	r := rand.New(rand.NewSource(11))
	for i := range pats {
		p := make([]byte, stripe)
		for b := 0; b < stripe; b += bs {
			r.Read(p[b : b+bs/2])
			copy(p[b+bs/2:b+bs], strings.Repeat("obdvol nbd bench ", bs/32))
		}
		pats[i] = p
		patFiles[i] = filepath.Join(mkdir(work, "pat"), fmt.Sprintf("p%02d", i))
		check(os.WriteFile(patFiles[i], p, 0o600))
	}
	stripes := int(size / stripe)
	type result struct {
		name      string
		iops, seq float64
	}
	var res []result
	run := func(name, uri string) result {
		rr := result{name: name, iops: fioRun(uri, "randread", "4k", secs).iops, seq: fioRun(uri, "read", "1M", 3).bw}
		fmt.Printf("%-22s %9.0f IOPS   %7.0f MB/s sequential\n", name, rr.iops, rr.seq/1e6)
		res = append(res, rr)
		return rr
	}
	for _, depth := range []int{1, 16, 64} {
		root := filepath.Join(work, fmt.Sprintf("nbd-obdvol-%d", depth))
		e := newEnv(root, 32<<20)
		_, err := e.mgr.Create("v", size, volume.CreateOptions{})
		check(err)
		v, err := e.mgr.Open("v")
		check(err)
		for k := 0; k < depth; k++ {
			for s := k; s < stripes; s += depth {
				_, err := v.WriteAt(pats[s%64], int64(s)*stripe)
				check(err)
			}
			check(v.Flush())
			_, err := v.Snapshot(context.Background(), fmt.Sprintf("l%d", k))
			check(err)
		}
		v.Close()
		e.mgr.Close()
		sock := filepath.Join(root, "s.sock")
		srv := exec.Command(obdvol, "--root", root, "--no-progress", "--cpuprofile", filepath.Join(work, fmt.Sprintf("serve-%d.prof", depth)), "serve", "v", "--nbd", "unix:"+sock)
		check(srv.Start())
		waitSock(sock)
		run(fmt.Sprintf("obdvol depth %d", depth), "nbd+unix:///v?socket="+sock)
		srv.Process.Signal(os.Interrupt)
		srv.Wait()
	}
	var top string
	for _, depth := range []int{1, 16, 64} {
		dir := mkdir(work, fmt.Sprintf("nbd-qcow2-%d", depth))
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
				qa = append(qa, "-c", fmt.Sprintf("write -q -s %s %d %d", patFiles[s%64], s*stripe, stripe))
			}
			tool("qemu-io", append(qa, img)...)
			prev = img
		}
		if depth == 1 {
			top = prev
		}
		sock := filepath.Join(dir, "s.sock")
		srv := exec.Command("qemu-nbd", "-r", "-t", "-f", "qcow2", "-k", sock, prev)
		check(srv.Start())
		waitSock(sock)
		run(fmt.Sprintf("qemu-nbd qcow2 depth %d", depth), "nbd+unix:///?socket="+sock)
		srv.Process.Kill()
		srv.Wait()
	}
	sock := filepath.Join(mkdir(work, "nbdkit"), "s.sock")
	srv := exec.Command("nbdkit", "-f", "-U", sock, "memory", fmt.Sprint(size))
	check(srv.Start())
	waitSock(sock)
	tool("qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", top, "nbd+unix:///?socket="+sock)
	run("nbdkit memory", "nbd+unix:///?socket="+sock)
	srv.Process.Kill()
	srv.Wait()
	by := map[string]result{}
	for _, r := range res {
		by[r.name] = r
	}
	ratio := func(a, b string, target float64) {
		x := by[a].iops / by[b].iops
		ok := "met"
		if x < target {
			ok = "MISSED"
		}
		fmt.Printf("%-40s %.2f  (target >= %.1f: %s)\n", a+" / "+b, x, target, ok)
	}
	ratio("obdvol depth 64", "obdvol depth 1", 0.9)
	ratio("obdvol depth 1", "qemu-nbd qcow2 depth 1", 1.0)
	ratio("obdvol depth 64", "qemu-nbd qcow2 depth 64", 2.0)
	ratio("obdvol depth 1", "nbdkit memory", 0.6)
	fmt.Println()
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
