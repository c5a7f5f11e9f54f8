package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory and unmounts
// it when the test ends; it skips the test when mounting is impossible
// (not root, no CAP_SYS_ADMIN, a container without mount rights).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("cannot mount a %d-byte tmpfs to fill (needs root or CAP_SYS_ADMIN): %v", size, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fillDisk writes a file named path until the filesystem has at most
// leave bytes free (leave 0: until a 1-byte write fails with ENOSPC, the
// last byte taken). It fails the test unless the disk ends up that full.
func fillDisk(t *testing.T, path string, leave int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	free := func() int64 {
		var st unix.Statfs_t
		if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}
	buf := make([]byte, 64<<10)
	for _, chunk := range []int{64 << 10, 4 << 10, 1} {
		for free()-int64(chunk) >= leave {
			_, err := f.Write(buf[:chunk])
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if leave == 0 {
		if _, err := f.Write(buf[:1]); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("precondition: a write to the full disk = %v, want ENOSPC", err)
		}
	}
	if got := free(); got > leave {
		t.Fatalf("precondition: %d bytes free after filling, want at most %d", got, leave)
	}
}

// treeState lists everything under root with its type, size, allocated
// blocks and modification time (access times aside, a read changes none
// of them).
func treeState(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, fmt.Sprintf("%s mode=%o size=%d blocks=%d mtime=%d.%09d ctime=%d.%09d",
			rel, st.Mode, st.Size, st.Blocks, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// On a disk full to the last byte, the commands that only read (list,
// info, verify, export of a volume and of a snapshot) work, return the
// right bytes and change nothing under --root: not the catalogue, not a
// lock file, not a writable layer (one never opened, one with flushed
// data, one under a snapshot, one frozen by a snapshot that failed for
// lack of space). The exports go to another filesystem.
func TestCLIReadOnlyCommandsOnFullDisk(t *testing.T) {
	t.Parallel()
	mnt := mountTmpfs(t, 24<<20)
	h := &cliHost{t: t, root: filepath.Join(mnt, "root")}
	rng := rand.New(rand.NewSource(42))
	const size = 2 * mib
	someZero := func(b int) bool { return b%3 == 0 }

	h.ok("create", "never", "--size", "2M") // never opened: no writable layer on disk

	h.ok("create", "flushed", "--size", "2M")
	flushed := randomImage(rng, size, someZero)
	h.ok("import", "flushed", writeFile(t, "flushed.img", flushed))

	h.ok("create", "snapped", "--size", "2M")
	s1 := randomImage(rng, size, someZero)
	h.ok("import", "snapped", writeFile(t, "s1.img", s1))
	h.ok("snapshot", "snapped@s1")
	top := randomImage(rng, 256<<10, func(int) bool { return false })
	h.ok("import", "--offset", "1M", "snapped", writeFile(t, "top.img", top))
	snapped := bytes.Clone(s1)
	copy(snapped[1*mib:], top)

	h.ok("create", "frozen", "--size", "2M")
	frozen := randomImage(rng, size, someZero)
	h.ok("import", "frozen", writeFile(t, "frozen.img", frozen))
	// Room for the freeze (a catalogue commit, a new writable layer), not
	// for the sealed layer (about 1.4 MiB of random data).
	filler := filepath.Join(mnt, "filler")
	fillDisk(t, filler, 256<<10)
	if r := h.run("snapshot", "frozen@s1"); r.code == 0 || !strings.Contains(r.stderr, "no space left") {
		t.Fatalf("precondition: a snapshot on a nearly full disk must fail for lack of space\n%s", r)
	}
	fillDisk(t, filler, 0)

	before := treeState(t, h.root)
	if !slicesContain(before, filepath.Join("volumes", "frozen", "w-2")) {
		t.Fatalf("precondition: the failed snapshot left no frozen layer (w-2 beside w-1):\n%s", strings.Join(before, "\n"))
	}
	if slicesContain(before, filepath.Join("volumes", "never", "w-1")) {
		t.Fatalf("precondition: volume never has a writable layer directory:\n%s", strings.Join(before, "\n"))
	}

	l := h.json("list")
	var names []string
	for i := range jget(t, l, "volumes").([]any) {
		names = append(names, jstr(t, l, "volumes", i, "name"))
	}
	if got := strings.Join(names, " "); got != "flushed frozen never snapped" {
		t.Errorf("list on a full disk: volumes %q", got)
	}
	h.ok("list")
	for _, v := range []string{"never", "flushed", "snapped", "frozen"} {
		if got := jstr(t, h.json("info", v), "volume", "name"); got != v {
			t.Errorf("info %s: name %q", v, got)
		}
		h.ok("info", v)
	}
	if got := jstr(t, h.json("info", "frozen"), "volume", "pending_snapshot"); got != "s1" {
		t.Errorf("info frozen: pending_snapshot %q, want s1", got)
	}
	if r := h.ok("info", "frozen"); !strings.Contains(r.stdout, "snapshot s1 is not finished") {
		t.Errorf("info of a volume with an unfinished snapshot should say so\n%s", r)
	}
	h.ok("verify", "snapped")
	h.ok("verify", "snapped@s1")

	h.wantDisk("never", make([]byte, size))
	h.wantDisk("flushed", flushed)
	h.wantDisk("snapped", snapped)
	h.wantDisk("snapped@s1", s1)
	h.wantDisk("frozen", frozen)
	if r := h.ok("export", "frozen", filepath.Join(t.TempDir(), "frozen.img")); !strings.Contains(r.stderr, "snapshot s1 is not finished") {
		t.Errorf("export of a volume with an unfinished snapshot should warn about it\n%s", r)
	}

	after := treeState(t, h.root)
	if b, a := strings.Join(before, "\n"), strings.Join(after, "\n"); b != a {
		t.Errorf("read-only commands changed the root:\nonly before:\n%s\nonly after:\n%s",
			strings.Join(minus(before, after), "\n"), strings.Join(minus(after, before), "\n"))
	}
}

// slicesContain reports whether some line of the tree listing is about
// path itself.
func slicesContain(lines []string, path string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, path+" ") {
			return true
		}
	}
	return false
}

// minus returns the lines of a that are not in b.
func minus(a, b []string) []string {
	in := map[string]bool{}
	for _, l := range b {
		in[l] = true
	}
	var out []string
	for _, l := range a {
		if !in[l] {
			out = append(out, l)
		}
	}
	return out
}
