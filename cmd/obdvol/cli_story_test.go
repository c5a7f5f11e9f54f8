package main

import (
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestCLIStory drives the obdvol binary through a volume's life: create,
// import, export, snapshot, clone, info, list, rollback, resize, flatten,
// delete, gc and verify, checking every byte exported against a plain
// in-memory model of each disk.
func TestCLIStory(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	rng := rand.New(rand.NewSource(1))

	// create
	r := h.ok("create", "vol", "--size", "16M")
	if r.stdout != "created volume vol (16M)\n" {
		t.Errorf("create says %q", r.stdout)
	}
	disk := make([]byte, 16*mib)
	h.wantDisk("vol", disk)

	// import: every 4th block zero, a run of zero blocks, a partial tail.
	n1 := 3*mib + 1234
	zero1 := func(b int) bool { return b%4 == 1 || b >= 100 && b < 132 }
	img1 := randomImage(rng, n1, zero1)
	zeroBlocks := 0
	for b := 0; (b+1)*4096 <= n1; b++ {
		if zero1(b) {
			zeroBlocks++
		}
	}
	m := h.json("import", "vol", writeFile(t, "img1", img1))
	if jstr(t, m, "volume") != "vol" || jint(t, m, "offset") != 0 || jint(t, m, "bytes") != int64(n1) {
		t.Errorf("import --json: %v", m)
	}
	if z, d := jint(t, m, "zero_bytes"), jint(t, m, "data_bytes"); z != int64(zeroBlocks*4096) || d != int64(n1-zeroBlocks*4096) {
		t.Errorf("import: %d data and %d zero bytes, want %d and %d", d, z, n1-zeroBlocks*4096, zeroBlocks*4096)
	}
	copy(disk, img1)
	// At an unaligned --offset given in bytes, with a zero block inside.
	img2 := randomImage(rng, 40000, func(b int) bool { return b == 2 })
	off2 := 5*mib + 100
	r = h.ok("import", "vol", writeFile(t, "img2", img2), "--offset", strconv.Itoa(off2))
	if !strings.Contains(r.stdout, "at offset "+strconv.Itoa(off2)) {
		t.Errorf("import --offset says %q", r.stdout)
	}
	copy(disk[off2:], img2)
	// Zeros over data imported before: they must read back as zeros.
	img3 := randomImage(rng, 64<<10, func(b int) bool { return b > 0 })
	h.ok("import", "vol", writeFile(t, "img3", img3), "--offset", "1M")
	copy(disk[mib:], img3)
	h.wantDisk("vol", disk)

	// The exported file is sparse: 4M runs of zeros are holes.
	f := filepath.Join(t.TempDir(), "sparse.img")
	h.ok("export", "vol", f)
	if st, err := os.Stat(f); err != nil {
		t.Fatal(err)
	} else if alloc := st.Sys().(*syscall.Stat_t).Blocks * 512; st.Size() != 16*mib || alloc > 12*mib {
		t.Errorf("exported file: size %d, %d bytes allocated; want 16M with the zero half as holes", st.Size(), alloc)
	}

	// snapshot
	m = h.json("snapshot", "vol@s1")
	d1 := jstr(t, m, "layer", "digest")
	if !strings.HasPrefix(d1, "sha256:") || jstr(t, m, "snapshot", "name") != "s1" || jstr(t, m, "snapshot", "volume") != "vol" {
		t.Errorf("snapshot --json: %v", m)
	}
	if got := jstrs(t, m, "snapshot", "layers"); !slices.Equal(got, []string{d1}) {
		t.Errorf("snapshot layers %v, want [%s]", got, d1)
	}
	if _, err := os.Stat(blobPath(h.root, d1)); err != nil {
		t.Errorf("layer blob: %v", err)
	}
	snap1 := slices.Clone(disk)

	// Writes after the snapshot, zeros over sealed data included.
	img4 := randomImage(rng, 100<<10, func(b int) bool { return b%3 == 0 })
	h.ok("import", "vol", writeFile(t, "img4", img4), "--offset", "10M")
	copy(disk[10*mib:], img4)
	h.ok("import", "vol", writeFile(t, "zeros", make([]byte, 8192)))
	clear(disk[:8192])
	r = h.ok("snapshot", "vol@s2")
	if !strings.HasPrefix(r.stdout, "snapshot vol@s2: layer sha256:") {
		t.Errorf("snapshot says %q", r.stdout)
	}
	d2 := jstr(t, h.json("info", "vol"), "volume", "chain", 1, "digest")
	snap2 := slices.Clone(disk)
	h.wantDisk("vol", snap2)
	h.wantDisk("vol@s1", snap1)
	h.wantDisk("vol@s2", snap2)

	// A snapshot name that exists.
	h.jsonErr(1, "exists", "snapshot", "vol@s1")
	h.fails(1, []string{"vol@s1", "exists"}, "snapshot", "vol@s1")

	// clone: shares the snapshot's layer, writable on its own.
	r = h.ok("create", "clone", "--from", "vol@s1")
	if r.stdout != "created volume clone (16M) from vol@s1, sharing 1 layer(s)\n" {
		t.Errorf("create --from says %q", r.stdout)
	}
	h.wantDisk("clone", snap1)
	cloneDisk := slices.Clone(snap1)
	img5 := randomImage(rng, 4096, func(int) bool { return false })
	h.ok("import", "clone", writeFile(t, "img5", img5), "--offset", "2M")
	copy(cloneDisk[2*mib:], img5)
	h.wantDisk("clone", cloneDisk)
	h.wantDisk("vol@s1", snap1)

	// info, text and JSON
	r = h.ok("info", "vol")
	for _, s := range []string{"volume:     vol\n", "size:       16M (16777216 bytes)\n", "block size: 4096\n",
		"chain:      2 layer(s), base first\n", "snapshots:  2\n", "vol@s1  1 layer(s)", "vol@s2  2 layer(s)", "clones:     [clone]\n"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("info does not say %q:\n%s", s, r.stdout)
		}
	}
	if i1, i2 := strings.Index(r.stdout, d1), strings.Index(r.stdout, d2); i1 < 0 || i2 < 0 || i1 > i2 {
		t.Errorf("info does not list %s then %s:\n%s", d1, d2, r.stdout)
	}
	m = h.json("info", "vol")
	if jstr(t, m, "volume", "name") != "vol" || jint(t, m, "volume", "size") != 16*mib || jint(t, m, "volume", "block_size") != 4096 {
		t.Errorf("info --json: %v", m)
	}
	for i, d := range []string{d1, d2} {
		if got := jstr(t, m, "volume", "chain", i, "digest"); got != d {
			t.Errorf("chain[%d] %s, want %s", i, got, d)
		}
		st, err := os.Stat(blobPath(h.root, d))
		if err != nil {
			t.Fatal(err)
		}
		if got := jint(t, m, "volume", "chain", i, "stored_bytes"); got != st.Size() {
			t.Errorf("chain[%d] stored_bytes %d, blob file has %d", i, got, st.Size())
		}
		if jint(t, m, "volume", "chain", i, "logical_bytes") != 16*mib || jint(t, m, "volume", "chain", i, "data_bytes") <= 0 {
			t.Errorf("chain[%d]: %v", i, jget(t, m, "volume", "chain", i))
		}
	}
	if len(jget(t, m, "volume", "chain").([]any)) != 2 {
		t.Errorf("chain: %v", jget(t, m, "volume", "chain"))
	}
	if got := jstrs(t, m, "volume", "clones"); !slices.Equal(got, []string{"clone"}) {
		t.Errorf("clones %v", got)
	}
	if jstr(t, m, "volume", "snapshots", 1, "name") != "s2" || jint(t, m, "volume", "snapshots", 1, "layers") != 2 {
		t.Errorf("snapshots: %v", jget(t, m, "volume", "snapshots"))
	}
	m = h.json("info", "clone")
	if jstr(t, m, "volume", "origin") != "vol@s1" || jstr(t, m, "volume", "chain", 0, "digest") != d1 || len(jstrs(t, m, "volume", "clones")) != 0 {
		t.Errorf("info clone --json: %v", m)
	}

	// list
	m = h.json("list")
	vols := map[string]any{}
	for i := range jget(t, m, "volumes").([]any) {
		vols[jstr(t, m, "volumes", i, "name")] = jget(t, m, "volumes", i)
	}
	if len(vols) != 2 || vols["vol"] == nil || vols["clone"] == nil {
		t.Fatalf("list --json: %v", m)
	}
	if jint(t, vols["vol"], "layers") != 2 || jint(t, vols["vol"], "size") != 16*mib || !slices.Equal(jstrs(t, vols["vol"], "snapshots"), []string{"s1", "s2"}) {
		t.Errorf("list vol: %v", vols["vol"])
	}
	if _, ok := vols["vol"].(map[string]any)["origin"]; ok {
		t.Errorf("list vol has an origin: %v", vols["vol"])
	}
	if jstr(t, vols["clone"], "origin") != "vol@s1" || jint(t, vols["clone"], "layers") != 1 || len(jstrs(t, vols["clone"], "snapshots")) != 0 {
		t.Errorf("list clone: %v", vols["clone"])
	}
	r = h.ok("list")
	if !strings.HasPrefix(r.stdout, "NAME") || !strings.Contains(r.stdout, "vol@s1") {
		t.Errorf("list:\n%s", r.stdout)
	}

	// rollback: newer snapshots need --force; a clone's origin is kept.
	h.fails(1, []string{"newer snapshots s2", "--force"}, "rollback", "vol@s1")
	h.jsonErr(1, "refused", "rollback", "vol@s1")
	h.ok("create", "clone2", "--from", "vol@s2")
	h.fails(1, []string{"vol@s2", "clone2"}, "rollback", "vol@s1", "--force")
	h.jsonErr(1, "refused", "rollback", "vol@s1", "--force")
	h.wantDisk("vol", snap2)
	h.wantDisk("clone2", snap2)
	h.ok("delete", "clone2")
	h.ok("import", "vol", writeFile(t, "junk", img5), "--offset", "12M") // the writable layer goes too
	m = h.json("rollback", "vol@s1", "--force")
	if got := jstrs(t, m, "removed_snapshots"); !slices.Equal(got, []string{"s2"}) {
		t.Errorf("rollback removed %v, want [s2]", got)
	}
	disk = slices.Clone(snap1)
	h.wantDisk("vol", disk)
	m = h.json("info", "vol")
	if got := jstr(t, m, "volume", "chain", 0, "digest"); got != d1 || len(jget(t, m, "volume", "chain").([]any)) != 1 || len(jget(t, m, "volume", "snapshots").([]any)) != 1 {
		t.Errorf("info after rollback: %v", m)
	}
	h.fails(1, []string{"not found"}, "export", "vol@s2", "-")
	r = h.ok("rollback", "vol@s1") // nothing newer: no --force needed
	if r.stdout != "rolled vol back to s1\n" {
		t.Errorf("rollback says %q", r.stdout)
	}

	// resize: grown space reads zeros; shrinking needs --shrink and drops
	// the data past the new end, for good.
	r = h.ok("resize", "vol", "32M")
	if r.stdout != "resized vol to 32M\n" {
		t.Errorf("resize says %q", r.stdout)
	}
	disk = append(disk, make([]byte, 16*mib)...)
	h.wantDisk("vol", disk)
	img6 := randomImage(rng, 8192, func(int) bool { return false })
	h.ok("import", "vol", writeFile(t, "img6", img6), "--offset", "30M")
	copy(disk[30*mib:], img6)
	h.fails(1, []string{"--shrink"}, "resize", "vol", "24M")
	h.jsonErr(1, "refused", "resize", "vol", "24M")
	h.wantDisk("vol", disk)
	h.ok("resize", "vol", "24M", "--shrink")
	disk = disk[:24*mib]
	h.wantDisk("vol", disk)
	if got := jint(t, h.json("info", "vol"), "volume", "size"); got != 24*mib {
		t.Errorf("size after shrink %d", got)
	}
	h.ok("resize", "vol", "32M")
	disk = append(disk, make([]byte, 8*mib)...)
	h.wantDisk("vol", disk)

	// flatten: a 3-layer chain (zeros over lower data included) becomes one
	// layer; snapshots keep their chains; the writable layer is untouched.
	h.ok("snapshot", "vol@s3")
	snap3 := slices.Clone(disk)
	img7 := randomImage(rng, 2*mib, func(b int) bool { return b%2 == 0 })
	h.ok("import", "vol", writeFile(t, "img7", img7), "--offset", "1M")
	copy(disk[mib:], img7)
	h.ok("snapshot", "vol@s4")
	snap4 := slices.Clone(disk)
	h.ok("import", "vol", writeFile(t, "img5", img5), "--offset", "20M")
	copy(disk[20*mib:], img5)
	m = h.json("info", "vol")
	if n := len(jget(t, m, "volume", "chain").([]any)); n != 3 {
		t.Fatalf("chain of %d layers before flatten, want 3", n)
	}
	m = h.json("flatten", "vol")
	dF := jstr(t, m, "layer", "digest")
	if jint(t, m, "layers_before") != 3 {
		t.Errorf("flatten --json: %v", m)
	}
	m = h.json("info", "vol")
	if got := jstr(t, m, "volume", "chain", 0, "digest"); got != dF || len(jget(t, m, "volume", "chain").([]any)) != 1 {
		t.Errorf("info after flatten: %v", jget(t, m, "volume", "chain"))
	}
	if r := h.ok("info", "vol"); !strings.Contains(r.stdout, "chain:      1 layer(s)") {
		t.Errorf("info after flatten:\n%s", r.stdout)
	}
	h.wantDisk("vol", disk)
	h.wantDisk("vol@s3", snap3)
	h.wantDisk("vol@s4", snap4)

	// delete: refused while a clone depends on the snapshot or volume.
	h.fails(1, []string{"vol@s1", "clone", "--force"}, "delete", "vol@s1")
	h.jsonErr(1, "refused", "delete", "vol@s1")
	h.wantDisk("vol@s1", snap1)
	h.ok("delete", "vol@s3")
	h.fails(1, []string{"not found"}, "export", "vol@s3", "-")
	h.fails(1, []string{"clone", "--force"}, "delete", "vol")
	h.jsonErr(1, "refused", "delete", "vol")
	h.wantDisk("vol", disk)
	r = h.ok("delete", "vol", "--force")
	if r.stdout != "deleted vol\n" {
		t.Errorf("delete says %q", r.stdout)
	}
	h.jsonErr(1, "not_found", "info", "vol")
	if m := h.json("list"); len(jget(t, m, "volumes").([]any)) != 1 || jstr(t, m, "volumes", 0, "name") != "clone" {
		t.Errorf("list after delete: %v", m)
	}
	h.wantDisk("clone", cloneDisk)

	// gc: the layers of the deleted volume and of the rolled-back snapshot
	// go; the layer the clone uses stays.
	var blobsBefore []string
	ents, err := os.ReadDir(blobPath(h.root, ""))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		blobsBefore = append(blobsBefore, "sha256:"+e.Name())
	}
	var garbage []string
	var garbageBytes int64
	for _, d := range blobsBefore {
		if d != d1 {
			garbage = append(garbage, d)
			st, err := os.Stat(blobPath(h.root, d))
			if err != nil {
				t.Fatal(err)
			}
			garbageBytes += st.Size()
		}
	}
	for _, d := range []string{d2, dF} {
		if !slices.Contains(garbage, d) {
			t.Errorf("blob %s missing before gc", d)
		}
	}
	r = h.ok("gc", "--dry-run")
	if !strings.Contains(r.stdout, "would remove "+d2+"\n") || !strings.Contains(r.stdout, "would remove "+strconv.Itoa(len(garbage))+" blob(s)") {
		t.Errorf("gc --dry-run says:\n%s", r.stdout)
	}
	m = h.json("gc", "--dry-run")
	if got := jstrs(t, m, "blobs"); !sameSet(got, garbage) || jint(t, m, "bytes") != garbageBytes || jget(t, m, "dry_run") != true {
		t.Errorf("gc --dry-run --json: %v, want blobs %v of %d bytes", m, garbage, garbageBytes)
	}
	for _, d := range blobsBefore {
		if _, err := os.Stat(blobPath(h.root, d)); err != nil {
			t.Errorf("after gc --dry-run: %v", err)
		}
	}
	m = h.json("gc")
	if got := jstrs(t, m, "blobs"); !sameSet(got, garbage) || jint(t, m, "bytes") != garbageBytes || garbageBytes <= 0 {
		t.Errorf("gc --json: %v, want blobs %v of %d bytes", m, garbage, garbageBytes)
	}
	for _, d := range garbage {
		if _, err := os.Stat(blobPath(h.root, d)); !os.IsNotExist(err) {
			t.Errorf("blob %s after gc: %v", d, err)
		}
	}
	if _, err := os.Stat(blobPath(h.root, d1)); err != nil {
		t.Errorf("gc removed a layer in use: %v", err)
	}
	if r := h.ok("gc"); r.stdout != "removed 0 blob(s), 0B; 0 leftover file(s), 0B\n" {
		t.Errorf("second gc says %q", r.stdout)
	}
	h.wantDisk("clone", cloneDisk)

	// verify, then corrupt one byte in the middle of the shared layer.
	h.ok("snapshot", "clone@c1")
	r = h.ok("verify", "clone")
	if !strings.HasSuffix(r.stdout, "clone: 2 layer(s) verified\n") || strings.Count(r.stdout, "  ok\n") != 2 {
		t.Errorf("verify says:\n%s", r.stdout)
	}
	m = h.json("verify", "clone@c1")
	if jget(t, m, "ok") != true || jstr(t, m, "layers", 0, "digest") != d1 || jint(t, m, "layers", 0, "chunks") <= 0 {
		t.Errorf("verify --json: %v", m)
	}
	p := blobPath(h.root, d1)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x55
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r = h.fails(1, []string{"failed"}, "verify", "clone")
	if !strings.Contains(r.stdout, d1+"  ") || !strings.Contains(r.stdout, "FAILED") {
		t.Errorf("verify of a corrupt layer says:\n%s", r.stdout)
	}
	if msg := h.jsonErr(1, "corrupt", "verify", "clone@c1"); !strings.Contains(msg, "failed") {
		t.Errorf("verify --json message %q", msg)
	}
	h.fails(1, []string{"checksum"}, "export", "clone", "-")
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
