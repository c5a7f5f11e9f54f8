package volume_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"path/filepath"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

// newManager returns a manager over a fresh root (or the given one).
func newManager(t testing.TB, root string) *volume.Manager {
	t.Helper()
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	m := volume.NewManager(root, cat, repo.Blobs{Store: st}, volume.Options{CacheBytes: 4 << 20})
	t.Cleanup(func() { m.Close() })
	return m
}

// model is the plain in-memory disk each volume must equal.
type model struct {
	vols  map[string][]byte
	snaps map[string][]byte // "vol@snap"
	order map[string][]string
}

func (md *model) check(t *testing.T, step int, op string, v *volume.Volume) {
	t.Helper()
	want := md.vols[v.Name()]
	if uint64(len(want)) != v.Size() {
		t.Fatalf("step %d (%s): %s size %d, model %d", step, op, v.Name(), v.Size(), len(want))
	}
	got := make([]byte, len(want))
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatalf("step %d (%s): read: %v", step, op, err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for got[i] == want[i] {
			i++
		}
		t.Fatalf("step %d (%s): %s differs from model at byte %d", step, op, v.Name(), i)
	}
}

func TestPropertyAgainstModel(t *testing.T) {
	seeds := []int64{1, 2, 3}
	if testing.Short() {
		seeds = seeds[:1]
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runModel(t, seed, 300) })
	}
}

func runModel(t *testing.T, seed int64, steps int) {
	ctx := context.Background()
	r := rand.New(rand.NewSource(seed))
	root := t.TempDir()
	m := newManager(t, root)
	const bs = 4096
	size := uint64(256 * bs)
	if _, err := m.Create("v0", size, volume.CreateOptions{ChunkSize: 16 << 10}); err != nil {
		t.Fatal(err)
	}
	md := &model{vols: map[string][]byte{"v0": make([]byte, size)}, snaps: map[string][]byte{}, order: map[string][]string{}}
	open := map[string]*volume.Volume{}
	get := func(name string) *volume.Volume {
		if v, ok := open[name]; ok {
			return v
		}
		v, err := m.Open(name)
		if err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		open[name] = v
		return v
	}
	closeAll := func() {
		for n, v := range open {
			if err := v.Close(); err != nil {
				t.Fatal(err)
			}
			delete(open, n)
		}
	}
	names := func() []string {
		var out []string
		for n := range md.vols {
			out = append(out, n)
		}
		// deterministic order
		for i := range out {
			for j := i + 1; j < len(out); j++ {
				if out[j] < out[i] {
					out[i], out[j] = out[j], out[i]
				}
			}
		}
		return out
	}
	nsnap := 0
	for step := 0; step < steps; step++ {
		vn := names()[r.Intn(len(md.vols))]
		disk := md.vols[vn]
		var op string
		switch k := r.Intn(100); {
		case k < 40: // write, sometimes unaligned
			off := r.Int63n(int64(len(disk)))
			n := r.Int63n(min(int64(len(disk))-off, 5*bs)) + 1
			if r.Intn(3) > 0 {
				off &^= bs - 1
				n = (n + bs - 1) &^ (bs - 1)
				n = min(n, int64(len(disk))-off)
			}
			p := make([]byte, n)
			if r.Intn(4) > 0 {
				r.Read(p)
			}
			op = fmt.Sprintf("write %s [%d,+%d)", vn, off, n)
			if _, err := get(vn).WriteAt(p, off); err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			copy(disk[off:], p)
		case k < 50: // zeroes / discard
			off := r.Int63n(int64(len(disk)))
			n := r.Int63n(min(int64(len(disk))-off, 9*bs)) + 1
			op = fmt.Sprintf("zero %s [%d,+%d)", vn, off, n)
			if err := get(vn).WriteZeroes(off, n); err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			clear(disk[off : off+n])
		case k < 60:
			nsnap++
			sn := fmt.Sprintf("s%d", nsnap)
			op = "snapshot " + vn + "@" + sn
			if _, err := get(vn).Snapshot(ctx, sn); err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			md.snaps[vn+"@"+sn] = bytes.Clone(disk)
			md.order[vn] = append(md.order[vn], sn)
		case k < 67:
			if len(md.order[vn]) == 0 {
				continue
			}
			i := r.Intn(len(md.order[vn]))
			sn := md.order[vn][i]
			op = "rollback " + vn + "@" + sn
			if v, ok := open[vn]; ok {
				v.Close()
				delete(open, vn)
			}
			newer := md.order[vn][i+1:]
			_, err := m.Rollback(vn, sn, false)
			if len(newer) > 0 {
				if !errors.Is(err, volume.ErrRefused) {
					t.Fatalf("%s without force over %v: %v", op, newer, err)
				}
				_, err = m.Rollback(vn, sn, true)
			}
			if errors.Is(err, volume.ErrRefused) {
				continue // a clone depends on a newer snapshot
			}
			if err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			for _, s := range newer {
				delete(md.snaps, vn+"@"+s)
			}
			md.order[vn] = md.order[vn][:i+1]
			md.vols[vn] = bytes.Clone(md.snaps[vn+"@"+sn])
		case k < 72:
			if len(md.order[vn]) == 0 || len(md.vols) > 5 {
				continue
			}
			sn := md.order[vn][r.Intn(len(md.order[vn]))]
			cn := fmt.Sprintf("c%d", step)
			op = "clone " + cn + " from " + vn + "@" + sn
			if _, err := m.Clone(cn, vn, sn); err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			md.vols[cn] = bytes.Clone(md.snaps[vn+"@"+sn])
			vn = cn
		case k < 80:
			op = "reopen all"
			closeAll()
			if r.Intn(2) == 0 {
				m.Close()
				m = newManager(t, root)
			}
		case k < 84:
			grow := uint64(r.Intn(8)+1) * bs
			op = fmt.Sprintf("resize %s +%d", vn, grow)
			if v, ok := open[vn]; ok {
				v.Close()
				delete(open, vn)
			}
			if err := m.Resize(vn, uint64(len(disk))+grow, false); err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			md.vols[vn] = append(disk, make([]byte, grow)...)
		case k < 87:
			shrink := uint64(r.Intn(8)+1) * bs
			if uint64(len(disk)) <= shrink+bs {
				continue
			}
			op = fmt.Sprintf("resize %s -%d", vn, shrink)
			if v, ok := open[vn]; ok {
				v.Close()
				delete(open, vn)
			}
			if err := m.Resize(vn, uint64(len(disk))-shrink, false); !errors.Is(err, volume.ErrRefused) {
				t.Fatalf("%s without --shrink: %v", op, err)
			}
			if err := m.Resize(vn, uint64(len(disk))-shrink, true); err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			md.vols[vn] = disk[:uint64(len(disk))-shrink]
		case k < 90:
			op = "flatten " + vn
			if _, err := get(vn).Flatten(ctx); err != nil {
				t.Fatalf("%s: %v", op, err)
			}
		case k < 94:
			op = "flush " + vn
			if err := get(vn).Flush(); err != nil {
				t.Fatal(err)
			}
		default:
			op = "check snapshots"
			for key, want := range md.snaps {
				vol, sn, _ := metadata.ParseRef(key)
				s, err := m.SnapshotChain(vol, sn)
				if err != nil {
					t.Fatalf("step %d: %s: %v", step, key, err)
				}
				ch, err := m.Chain(s.Layers, s.Size, bs)
				if err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(want))
				if _, err := ch.ReadAt(got, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("step %d: snapshot %s differs from model", step, key)
				}
			}
		}
		md.check(t, step, op, get(vn))
	}
	closeAll()
	// Everything the model has survives a fresh manager.
	m2 := newManager(t, root)
	for _, n := range names() {
		v, err := m2.Open(n)
		if err != nil {
			t.Fatal(err)
		}
		md.check(t, steps, "final reopen", v)
		v.Close()
	}
	if _, err := m2.GC(ctx, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range names() {
		v, _ := m2.Open(n)
		md.check(t, steps, "after gc", v)
		v.Close()
	}
}
