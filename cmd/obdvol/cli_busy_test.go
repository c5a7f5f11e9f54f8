package main

import (
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A volume one process holds open is refused at once to every other
// process that would write it, with a message naming the holder; reading
// its snapshots and its catalogue record is fine; once the holder lets go
// the same commands succeed and see what the holder wrote.
func TestCLIBusyInProcessHolder(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	rng := rand.New(rand.NewSource(3))
	h.ok("create", "v", "--size", "4M")
	disk := make([]byte, 4*mib)
	h.ok("snapshot", "v@s0")
	img := randomImage(rng, 64<<10, func(int) bool { return false })
	imgFile := writeFile(t, "img", img)

	e, err := openEnv(&globalOptions{Root: h.root, RemoteTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	held, err := e.mgr.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	holder := "in use by process " + strconv.Itoa(os.Getpid())
	for _, args := range [][]string{
		{"import", "v", imgFile},
		{"snapshot", "v@s1"},
		{"export", "v", filepath.Join(t.TempDir(), "busy.img")},
		{"resize", "v", "8M"},
		{"rollback", "v@s0"},
		{"flatten", "v"},
		{"delete", "v", "--force"},
	} {
		r := h.fails(1, []string{"volume v", holder}, args...)
		if r.took > 5*time.Second {
			t.Errorf("obdvol %v waited %v for the lock, want an immediate refusal", args, r.took)
		}
		h.jsonErr(1, "busy", args...)
	}
	// Reads that need no lock.
	h.wantDisk("v@s0", make([]byte, 4*mib))
	h.ok("info", "v")
	h.ok("list")

	// The holder writes, then lets go.
	hw := randomImage(rng, 8192, func(int) bool { return false })
	if _, err := held.WriteAt(hw, 2*mib); err != nil {
		t.Fatal(err)
	}
	copy(disk[2*mib:], hw)
	if err := held.Close(); err != nil {
		t.Fatal(err)
	}
	h.ok("import", "v", imgFile)
	copy(disk, img)
	h.ok("snapshot", "v@s1")
	h.wantDisk("v@s1", disk)
	h.wantDisk("v", disk)
}

// The same between two obdvol processes: a long import from a pipe holds
// the volume; a snapshot meanwhile is refused naming the importer, and
// succeeds once the import is done.
func TestCLIBusyBetweenProcesses(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	rng := rand.New(rand.NewSource(4))
	h.ok("create", "v", "--size", "4M")
	disk := make([]byte, 4*mib)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	imp := h.command(ctx, "import", "v", "/dev/stdin")
	stdin, err := imp.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var impErr strings.Builder
	imp.Stderr = &impErr
	if err := imp.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		imp.Wait()
	}()
	data := randomImage(rng, 12345, func(b int) bool { return b == 1 })
	if _, err := stdin.Write(data); err != nil {
		t.Fatal(err)
	}
	copy(disk, data)

	// The lock file names its holder once the importer has the lock.
	pid := strconv.Itoa(imp.Process.Pid)
	lockFile := filepath.Join(h.root, "volumes", "v", "lock")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if b, _ := os.ReadFile(lockFile); strings.TrimSpace(string(b)) == pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the importer (pid %s) never took the volume lock", pid)
		}
	}
	r := h.fails(1, []string{"volume v", "in use by process " + pid}, "snapshot", "v@s1")
	if r.took > 5*time.Second {
		t.Errorf("snapshot waited %v for the lock, want an immediate refusal", r.took)
	}
	h.jsonErr(1, "busy", "snapshot", "v@s1")
	h.jsonErr(1, "busy", "import", "v", writeFile(t, "other", data))

	if err := stdin.Close(); err != nil {
		t.Fatal(err)
	}
	if err := imp.Wait(); err != nil {
		t.Fatalf("import from a pipe: %v\n%s", err, impErr.String())
	}
	m := h.json("snapshot", "v@s1")
	if got := jstrs(t, m, "snapshot", "layers"); len(got) != 1 {
		t.Errorf("snapshot layers %v", got)
	}
	h.wantDisk("v@s1", disk)
	if got := jstr(t, h.json("info", "v"), "volume", "snapshots", 0, "name"); got != "s1" {
		t.Errorf("snapshot %q", got)
	}
}
