package volume_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

// managerWith returns a manager over root using blobs, closed at cleanup.
func managerWith(t testing.TB, root string, blobs volume.Blobs) *volume.Manager {
	t.Helper()
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	m := volume.NewManager(root, cat, blobs, volume.Options{CacheBytes: 4 << 20})
	t.Cleanup(func() { m.Close() })
	return m
}

func mustStore(t testing.TB, root string) *repo.Store {
	t.Helper()
	st, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// storeRanges serves range requests from another host's content store,
// as a registry would.
type storeRanges struct{ s *repo.Store }

func (r storeRanges) FetchRange(_ context.Context, d string, off, n int64) ([]byte, error) {
	f, err := r.s.Open(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, err
	}
	return b, nil
}

// sourceVolume makes volume a on a fresh root with two snapshots' worth
// of random data and returns the manager, its store and a@s1's bytes.
func sourceVolume(t *testing.T) (*volume.Manager, *repo.Store, []byte) {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	st := mustStore(t, root)
	m := managerWith(t, root, repo.Blobs{Store: st})
	if _, err := m.Create("a", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("a")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewSource(9))
	for i, snap := range []string{"s0", "s1"} {
		buf := make([]byte, 256<<10)
		r.Read(buf)
		if _, err := v.WriteAt(buf, int64(i)*(512<<10)); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Snapshot(ctx, snap); err != nil {
			t.Fatal(err)
		}
	}
	v.Close()
	return m, st, mustSnapshotData(t, m, "a", "s1")
}

// gc runs while a pull is between fetching its layers and the transaction
// that references them (in another manager on the same root, as another
// process would): the lease keeps every layer, whole or lazily fetched,
// and the pulled volume reads back byte-exact from a fresh manager.
func TestGCDuringAdopt(t *testing.T) {
	for _, lazy := range []bool{false, true} {
		t.Run(fmt.Sprintf("lazy=%v", lazy), func(t *testing.T) {
			src, srcStore, want := sourceVolume(t)
			spec := specOf(t, src, "a", "s1")
			var digests []string
			for _, l := range spec.Layers {
				digests = append(digests, l.Digest)
			}
			root := t.TempDir()
			st := mustStore(t, root)
			blobs := repo.Blobs{Store: st}
			if lazy {
				blobs.Remote = func(d string) (repo.RangeFetcher, int64, error) {
					n, err := srcStore.Size(d)
					return storeRanges{srcStore}, n, err
				}
			}
			m := managerWith(t, root, blobs)
			lease, err := m.Lease("pull", digests...)
			if err != nil {
				t.Fatal(err)
			}
			defer lease.Release()
			if !lazy { // fetch every layer, as a pull does, after the lease
				for _, d := range digests {
					f, err := srcStore.Open(d)
					if err != nil {
						t.Fatal(err)
					}
					_, _, err = st.Ingest(f, d)
					f.Close()
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			var gcRes *volume.GCResult
			defer volume.SetAdoptHook(func() {
				other := managerWith(t, root, repo.Blobs{Store: st})
				if gcRes, err = other.GC(context.Background(), false, nil); err != nil {
					t.Error(err)
				}
				other.Close()
			})()
			if lazy {
				if ents, _ := os.ReadDir(st.PartialDir()); len(ents) != 0 {
					t.Fatalf("partial files before the adopt: %v", ents)
				}
			}
			spec.Lease = lease
			if _, err := m.AdoptChain("b", spec); err != nil {
				t.Fatal(err)
			}
			if gcRes == nil {
				t.Fatal("gc did not run during the adopt")
			}
			if len(gcRes.Blobs)+len(gcRes.Lazy) != 0 {
				t.Errorf("gc removed %v %v of a pull in flight", gcRes.Blobs, gcRes.Lazy)
			}
			if err := lease.Release(); err != nil {
				t.Fatal(err)
			}
			m.Close()

			fresh := managerWith(t, root, blobs)
			if got := exportAll(t, fresh, "b"); !bytes.Equal(got, want) {
				t.Fatal("the pulled volume differs from the snapshot")
			}
			fresh.Catalog().View(func(tx *metadata.Tx) error {
				if ls, err := tx.Leases(); err != nil || len(ls) != 0 {
					t.Errorf("leases left after the adopt: %v %v", ls, err)
				}
				return nil
			})
			if ents, _ := os.ReadDir(filepath.Join(root, "leases")); len(ents) != 0 {
				t.Errorf("lease lock files left: %v", ents)
			}
		})
	}
}

// Clone reads the snapshot and records the clone in one transaction: a
// delete of the source and a gc (another process) cannot get in between,
// so the clone never names removed layers.
func TestCloneRacesDeleteAndGC(t *testing.T) {
	src, srcStore, want := sourceVolume(t)
	root := filepath.Dir(filepath.Dir(filepath.Dir(mustBlobPath(t, srcStore, specOf(t, src, "a", "s1").Layers[0].Digest))))
	other := func() *volume.Manager {
		cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
		if err != nil {
			t.Fatal(err)
		}
		cat.Timeout = 300 * time.Millisecond
		m := volume.NewManager(root, cat, repo.Blobs{Store: srcStore}, volume.Options{})
		t.Cleanup(func() { m.Close() })
		return m
	}()
	var deleted, hooked bool
	defer volume.SetCloneHook(func() {
		hooked = true
		if err := other.Delete("a", true); err == nil {
			deleted = true
			if _, err := other.GC(context.Background(), false, nil); err != nil {
				t.Error(err)
			}
		} else if !errors.Is(err, metadata.ErrBusy) {
			t.Errorf("delete during the clone: %v", err)
		}
	})()
	_, cerr := src.Clone("c", "a", "s1")
	if !hooked {
		t.Fatal("the clone hook did not run")
	}
	if cerr != nil {
		t.Fatalf("clone: %v (delete ran inside it: %v)", cerr, deleted)
	}
	// Delete (unless it got in) and gc now: the clone keeps its layers.
	if !deleted {
		if err := src.Delete("a", true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.GC(context.Background(), false, nil); err != nil {
		t.Fatal(err)
	}
	src.Close()
	fresh := managerWith(t, root, repo.Blobs{Store: srcStore})
	if got := exportAll(t, fresh, "c"); !bytes.Equal(got, want) {
		t.Fatal("clone differs from its snapshot after delete and gc")
	}
}

func mustBlobPath(t *testing.T, s *repo.Store, d string) string {
	p, err := s.Path(d)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLeaseHelperProcess is not a test: TestExpiredLeaseDropped runs it in
// a child process that takes a lease and waits to be killed.
func TestLeaseHelperProcess(t *testing.T) {
	root := os.Getenv("OBDVOL_TEST_LEASE_ROOT")
	if root == "" {
		t.Skip("helper process for TestExpiredLeaseDropped")
	}
	m := managerWith(t, root, repo.Blobs{Store: mustStore(t, root)})
	l, err := m.Lease("pull", os.Getenv("OBDVOL_TEST_LEASE_DIGEST"))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("lease", l.ID())
	bufio.NewReader(os.Stdin).ReadString('\n') // until killed
	os.Exit(0)
}

// A live lease keeps its blob from gc, in this process or another; a
// lease whose owner was killed (its flock is free) is dropped by the next
// gc, with its lock file, and its blob goes.
func TestExpiredLeaseDropped(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st := mustStore(t, root)
	m := managerWith(t, root, repo.Blobs{Store: st})
	d, _, err := st.Ingest(strings.NewReader("a blob a pull is about to reference"), "")
	if err != nil {
		t.Fatal(err)
	}
	own, err := m.Lease("pull", d)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := m.GC(ctx, false, nil); err != nil || len(res.Blobs) != 0 || len(res.ExpiredLeases) != 0 {
		t.Fatalf("gc under this process's lease: %+v %v", res, err)
	}
	if err := own.Release(); err != nil {
		t.Fatal(err)
	}

	child := exec.Command(os.Args[0], "-test.run=^TestLeaseHelperProcess$", "-test.count=1")
	child.Env = append(os.Environ(), "OBDVOL_TEST_LEASE_ROOT="+root, "OBDVOL_TEST_LEASE_DIGEST="+d)
	stdin, _ := child.StdinPipe()
	defer stdin.Close()
	out, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	id, ok := strings.CutPrefix(strings.TrimSpace(line), "lease ")
	if err != nil || !ok {
		child.Process.Kill()
		child.Wait()
		t.Fatalf("child: %q %v", line, err)
	}
	if res, err := m.GC(ctx, false, nil); err != nil || len(res.Blobs) != 0 || len(res.ExpiredLeases) != 0 {
		t.Fatalf("gc under a live child's lease: %+v %v", res, err)
	}
	if !st.Has(d) {
		t.Fatal("blob gone under a live lease")
	}
	child.Process.Kill() // SIGKILL: no release, the kernel drops the flock
	child.Wait()
	m.Catalog().View(func(tx *metadata.Tx) error {
		if _, err := tx.Lease(id); err != nil {
			t.Errorf("the killed child's lease is not recorded: %v", err)
		}
		return nil
	})
	res, err := m.GC(ctx, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.ExpiredLeases, []string{id}) || !slices.Equal(res.Blobs, []string{d}) || st.Has(d) {
		t.Fatalf("gc after the owner died: %+v (blob present %v)", res, st.Has(d))
	}
	m.Catalog().View(func(tx *metadata.Tx) error {
		if _, err := tx.Lease(id); !errors.Is(err, metadata.ErrNotFound) {
			t.Errorf("expired lease still recorded: %v", err)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(root, "leases", id+".lock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("expired lease's lock file: %v", err)
	}
}

// gc frees what dead writers left (a killed seal's temp blob, a failed
// pull's partial download, a present-map without its lazy file) and
// keeps what live writers are writing, however old.
func TestGCRemovesLeftovers(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st := mustStore(t, root)
	m := managerWith(t, root, repo.Blobs{Store: st})
	old := time.Now().Add(-48 * time.Hour)
	write := func(path string, n int) string {
		if err := os.WriteFile(path, bytes.Repeat([]byte{7}, n), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(path, old, old)
		return path
	}
	hexOf := func(i int) string { return fmt.Sprintf("%064x", i) }
	deadTmp := write(filepath.Join(root, "tmp", "blob-123"), 1<<20)
	deadPart := write(filepath.Join(st.PartialDir(), hexOf(1)+".part"), 2<<20)
	orphanMap := write(filepath.Join(st.PartialDir(), hexOf(2)+".map"), 100)
	livePart := write(filepath.Join(st.PartialDir(), hexOf(3)+".part"), 4096)
	f, err := os.Open(livePart) // a pull in flight holds its partial file's lock
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	w, err := st.Create() // a seal in flight
	if err != nil {
		t.Fatal(err)
	}
	w.Write(bytes.Repeat([]byte("live"), 1<<16))
	tmps, _ := os.ReadDir(filepath.Join(root, "tmp"))
	for _, e := range tmps {
		os.Chtimes(filepath.Join(root, "tmp", e.Name()), old, old)
	}

	dry, err := m.GC(ctx, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(deadTmp); err != nil {
		t.Fatalf("dry run removed %s: %v", deadTmp, err)
	}
	res, err := m.GC(ctx, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The orphan map's digest is unreferenced: gc removes its lazy files
	// (the map) and reports the digest under Lazy, in both runs.
	wantLeft := []string{deadTmp, deadPart}
	slices.Sort(wantLeft)
	got := slices.Clone(res.Leftovers)
	slices.Sort(got)
	dryGot := slices.Clone(dry.Leftovers)
	slices.Sort(dryGot)
	if !slices.Equal(got, wantLeft) || !slices.Equal(dryGot, wantLeft) || res.LeftoverBytes < 3<<20 {
		t.Fatalf("gc removed %v (%d bytes), dry run listed %v; want %v", got, res.LeftoverBytes, dryGot, wantLeft)
	}
	orphan := "sha256:" + hexOf(2)
	if !slices.Contains(res.Lazy, orphan) || !slices.Contains(dry.Lazy, orphan) {
		t.Fatalf("lazy files removed %v, dry run listed %v; want %s in both", res.Lazy, dry.Lazy, orphan)
	}
	for _, p := range append(wantLeft, orphanMap) {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there: %v", p, err)
		}
	}
	if _, err := os.Stat(livePart); err != nil {
		t.Errorf("a live pull's partial file was removed: %v", err)
	}
	d, _, err := w.Commit("")
	if err != nil {
		t.Fatalf("a live writer's blob after gc: %v", err)
	}
	if !st.Has(d) {
		t.Fatal("committed blob missing")
	}
}

// hookBlobs is the real content store with a hook run after each new
// blob is committed (renamed into the store), before the seal that wrote
// it has recorded it.
type hookBlobs struct {
	repo.Blobs
	afterCommit func(digest string)
}

type hookWriter struct {
	*repo.Writer
	after func(string)
}

func (h hookBlobs) NewBlob() (volume.BlobWriter, error) {
	w, err := h.Store.Create()
	if err != nil {
		return nil, err
	}
	return hookWriter{w, h.afterCommit}, nil
}

func (w hookWriter) Commit(expected string) (string, int64, error) {
	d, n, err := w.Writer.Commit(expected)
	if err == nil && w.after != nil {
		w.after(d)
	}
	return d, n, err
}

// gc (another manager on the root) runs while a snapshot and a flatten
// have written their layer and not yet recorded it: it neither fails nor
// takes the layer, and both read back byte-exact.
func TestGCDuringSealAndFlatten(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st := mustStore(t, root)
	var gcErr error
	var taken []string
	ran := 0
	hb := hookBlobs{Blobs: repo.Blobs{Store: st}}
	hb.afterCommit = func(d string) {
		other := managerWith(t, root, repo.Blobs{Store: st})
		defer other.Close()
		res, err := other.GC(ctx, false, nil)
		ran++
		if err != nil {
			gcErr = err
			return
		}
		if slices.Contains(res.Blobs, d) || !st.Has(d) {
			taken = append(taken, d)
		}
	}
	m := managerWith(t, root, hb)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	rand.New(rand.NewSource(3)).Read(want[:512<<10])
	if _, err := v.WriteAt(want[:512<<10], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Snapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	rand.New(rand.NewSource(4)).Read(want[256<<10 : 768<<10])
	if _, err := v.WriteAt(want[256<<10:768<<10], 256<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Snapshot(ctx, "s2"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Flatten(ctx); err != nil {
		t.Fatal(err)
	}
	v.Close()
	if ran != 3 || gcErr != nil || len(taken) != 0 {
		t.Fatalf("gc during seals and flatten: ran %d times, error %v, took %v", ran, gcErr, taken)
	}
	m.Close()
	fresh := managerWith(t, root, repo.Blobs{Store: st})
	if got := exportAll(t, fresh, "v"); !bytes.Equal(got, want) {
		t.Fatal("volume differs after seals and flatten under gc")
	}
	if got := mustSnapshotData(t, fresh, "v", "s2"); !bytes.Equal(got, want) {
		t.Fatal("snapshot s2 differs")
	}
}

// The lease lifecycle: nothing is recorded before a digest is named;
// Add records, then extends; Release deletes the record and the lock
// file; a released lease refuses Add; Release twice is fine.
func TestLeaseLifecycle(t *testing.T) {
	root := t.TempDir()
	m := managerWith(t, root, repo.Blobs{Store: mustStore(t, root)})
	leases := func() []*metadata.Lease {
		var ls []*metadata.Lease
		if err := m.Catalog().View(func(tx *metadata.Tx) (err error) { ls, err = tx.Leases(); return }); err != nil {
			t.Fatal(err)
		}
		return ls
	}
	l, err := m.Lease("seal v")
	if err != nil {
		t.Fatal(err)
	}
	lockPath := filepath.Join(root, "leases", l.ID()+".lock")
	if _, err := os.Stat(lockPath); err != nil {
		t.Fatalf("lock file: %v", err)
	}
	if ls := leases(); len(ls) != 0 {
		t.Fatalf("a lease with no digests is recorded: %+v", ls[0])
	}
	d1, d2 := "sha256:"+strings.Repeat("1", 64), "sha256:"+strings.Repeat("2", 64)
	if err := l.Add(d1); err != nil {
		t.Fatal(err)
	}
	if err := l.Add(d2, d1); err != nil {
		t.Fatal(err)
	}
	if ls := leases(); len(ls) != 1 || ls[0].ID != l.ID() || !slices.Equal(ls[0].Digests, []string{d1, d2}) || ls[0].PID != os.Getpid() {
		t.Fatalf("leases after Add: %+v", ls)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if ls := leases(); len(ls) != 0 {
		t.Fatalf("lease recorded after Release: %+v", ls[0])
	}
	if _, err := os.Stat(lockPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock file after Release: %v", err)
	}
	if err := l.Add(d1); err == nil {
		t.Fatal("Add on a released lease succeeded")
	}
	if err := l.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if err := m.Catalog().Update(func(tx *metadata.Tx) error { return tx.CreateLease(&metadata.Lease{ID: l.ID(), Op: "x"}) }); err != nil {
		t.Fatal(err)
	}
	// A record whose lock file is gone has expired.
	res, err := m.GC(context.Background(), false, nil)
	if err != nil || !slices.Equal(res.ExpiredLeases, []string{l.ID()}) {
		t.Fatalf("gc of a lease with no lock file: %+v %v", res, err)
	}
}
