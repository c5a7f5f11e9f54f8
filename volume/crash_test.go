package volume_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obdvol/obdvol/volume"
)

// The crash test runs a writer in a child process (this test binary with
// OBDVOL_CRASH_WRITER set), kills it with SIGKILL at a random moment, and
// checks the flush guarantee: every write a completed Flush covered is
// there (or a later write to the same block), nothing else appears, and
// the catalogue and layers stay consistent even if the kill hit a seal.

const (
	crashBlocks = 512
	crashBS     = 4096
)

// crashOp is op i of the writer's deterministic sequence.
func crashOp(seed int64, i int) (blk uint64, zero bool) {
	r := rand.New(rand.NewSource(seed*1_000_003 + int64(i)))
	return uint64(r.Intn(crashBlocks)), r.Intn(8) == 0
}

// crashData is the content op i writes: its number and block, repeated.
func crashData(i int, blk uint64) []byte {
	p := make([]byte, crashBS)
	for o := 0; o < crashBS; o += 16 {
		binary.LittleEndian.PutUint64(p[o:], uint64(i)+1)
		binary.LittleEndian.PutUint64(p[o+8:], blk)
	}
	return p
}

func TestMain(m *testing.M) {
	if root := os.Getenv("OBDVOL_CRASH_WRITER"); root != "" {
		seed, _ := strconv.ParseInt(os.Getenv("OBDVOL_CRASH_SEED"), 10, 64)
		start, _ := strconv.Atoi(os.Getenv("OBDVOL_CRASH_START"))
		crashWriter(root, seed, start)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func crashWriter(root string, seed int64, start int) {
	m := newManager(&testing.T{}, root)
	v, err := m.Open("crash")
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(3)
	}
	r := rand.New(rand.NewSource(seed))
	out := bufio.NewWriter(os.Stdout)
	for i := start; ; i++ {
		blk, zero := crashOp(seed, i)
		if zero {
			err = v.WriteZeroes(int64(blk*crashBS), crashBS)
		} else {
			_, err = v.WriteAt(crashData(i, blk), int64(blk*crashBS))
		}
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(3)
		}
		switch r.Intn(40) {
		case 0:
			if err := v.Flush(); err != nil {
				fmt.Println("ERR", err)
				os.Exit(3)
			}
			fmt.Fprintf(out, "F %d\n", i)
			out.Flush()
		case 1:
			if _, err := v.Snapshot(context.Background(), fmt.Sprintf("s%d-%d", os.Getpid(), i)); err != nil {
				fmt.Println("ERR", err)
				os.Exit(3)
			}
			fmt.Fprintf(out, "F %d\n", i)
			out.Flush()
		}
	}
}

func TestCrashFlushGuarantee(t *testing.T) {
	rounds := 12
	if testing.Short() {
		rounds = 4
	}
	root := t.TempDir()
	m := newManager(t, root)
	if _, err := m.Create("crash", crashBlocks*crashBS, volume.CreateOptions{ChunkSize: 16 << 10}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	seed := time.Now().UnixNano() % 1000
	if s, err := strconv.ParseInt(os.Getenv("OBDVOL_TEST_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("seed %d", seed)
	// history[i] is op i as the writer did it.
	flushed := -1 // highest op covered by a completed flush
	next := 0     // first op of the next child
	r := rand.New(rand.NewSource(seed))
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "OBDVOL_CRASH_WRITER="+root,
			fmt.Sprintf("OBDVOL_CRASH_SEED=%d", seed), fmt.Sprintf("OBDVOL_CRASH_START=%d", next))
		var stdout bytes.Buffer
		cmd.Stdout = &stdout
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+r.Intn(400)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		last := -1
		for _, line := range strings.Split(stdout.String(), "\n") {
			if strings.HasPrefix(line, "ERR") {
				t.Fatalf("writer: %s", line)
			}
			if n, err := fmt.Sscanf(line, "F %d", &last); n == 1 && err == nil && last > flushed {
				flushed = last
			}
		}
		bound := next + 1_000_000
		m := newManager(t, root)
		if _, err := m.Recover(); err != nil {
			t.Fatal(err)
		}
		v, err := m.Open("crash")
		if err != nil {
			t.Fatalf("round %d: reopen after kill: %v", round, err)
		}
		t.Logf("round %d: ops from %d, flushed through %d", round, next, flushed)
		checkCrashDisk(t, v, seed, flushed, next, bound)
		// The next child replays the deterministic sequence from the first
		// op no flush covered: ops lost in the crash are done again, and
		// ops that did reach the disk are rewritten with the same bytes.
		next = flushed + 1
		v.Close()
		m.Close()
	}
	if flushed < 0 {
		t.Fatal("no flush completed in any round: the test proved nothing")
	}
}

// checkCrashDisk checks every block: its content must come from the last
// flushed op on that block or a later op on that block (or be zero, or
// untouched, when allowed).
func checkCrashDisk(t *testing.T, v *volume.Volume, seed int64, flushed, next, bound int) {
	t.Helper()
	disk := make([]byte, crashBlocks*crashBS)
	if _, err := v.ReadAt(disk, 0); err != nil {
		t.Fatal(err)
	}
	// Last flushed op per block.
	lastFlushed := make([]int, crashBlocks)
	for i := range lastFlushed {
		lastFlushed[i] = -1
	}
	for i := 0; i <= flushed; i++ {
		blk, _ := crashOp(seed, i)
		lastFlushed[blk] = i
	}
	for blk := uint64(0); blk < crashBlocks; blk++ {
		got := disk[blk*crashBS : (blk+1)*crashBS]
		lf := lastFlushed[blk]
		allowedZero := lf < 0
		if lf >= 0 {
			if _, z := crashOp(seed, lf); z {
				allowedZero = true
			}
		}
		if bytes.Equal(got, make([]byte, crashBS)) {
			if allowedZero {
				continue
			}
			// A later (unflushed) zero op on this block also explains it.
			if laterOp(seed, blk, lf, bound, true) {
				continue
			}
			t.Fatalf("block %d reads zeros but op %d (flushed) wrote data", blk, lf)
		}
		op := int(binary.LittleEndian.Uint64(got)) - 1
		if !bytes.Equal(got, crashData(op, blk)) {
			t.Fatalf("block %d holds garbage (not any op's data)", blk)
		}
		if b, z := crashOp(seed, op); b != blk || z {
			t.Fatalf("block %d holds data of op %d, which did not write it", blk, op)
		}
		if op < lf {
			t.Fatalf("block %d holds op %d, older than flushed op %d: a flushed write was lost", blk, op, lf)
		}
	}
}

func laterOp(seed int64, blk uint64, after, bound int, zero bool) bool {
	for i := after + 1; i < after+200000 && i < bound; i++ {
		if b, z := crashOp(seed, i); b == blk && z == zero {
			return true
		}
	}
	return false
}
