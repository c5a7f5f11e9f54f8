package main

import (
	"bytes"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Usage errors exit 2, before anything touches the state directory, with
// a message on stderr, or a JSON error of kind "usage" with --json.
func TestCLIUsageErrors(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	img := writeFile(t, "img", make([]byte, 4096))
	cases := []struct {
		args []string
		msg  string
	}{
		{[]string{"--bogus"}, "unknown flag: --bogus"},
		{[]string{"list", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"create", "v", "--sizee", "1M"}, "unknown flag: --sizee"},
		{[]string{"create", "v", "-z", "1M"}, "unknown shorthand flag"},
		{[]string{"create", "v", "--size"}, "flag needs an argument"},
		{[]string{"create", "v", "--block-size", "big", "--size", "1M"}, "invalid argument"},
		{[]string{"create"}, "obdvol create takes 1 argument(s), got 0"},
		{[]string{"create", "a", "b", "--size", "1M"}, "takes 1 argument(s), got 2"},
		{[]string{"export", "v"}, "obdvol export takes 2 argument(s), got 1"},
		{[]string{"import", "v", img, "extra"}, "takes 2 argument(s), got 3"},
		{[]string{"list", "x"}, "takes 0 argument(s), got 1"},
		{[]string{"gc", "x"}, "takes 0 argument(s), got 1"},
		{[]string{"version", "x"}, "takes 0 argument(s), got 1"},
		{[]string{"create", "v"}, "exactly one of --size or --from"},
		{[]string{"create", "v", "--size", "1M", "--from", "a@b"}, "exactly one of --size or --from"},
		{[]string{"create", "v", "--size", "10X"}, `invalid size "10X"`},
		{[]string{"create", "v", "--size", "-1"}, `invalid size "-1"`},
		{[]string{"create", "v", "--size", ""}, "--size"},
		{[]string{"create", "v", "--size", "1.5G"}, `invalid size "1.5G"`},
		{[]string{"create", "v", "--size", "20000P"}, `size "20000P" is too large`},
		{[]string{"create", "v", "--size", "1M", "--chunk-size", "lots"}, `invalid size "lots"`},
		{[]string{"resize", "v", "10X"}, `invalid size "10X"`},
		{[]string{"resize", "v", ""}, `invalid size ""`},
		{[]string{"import", "v", img, "--offset", "1.5G"}, `invalid size "1.5G"`},
		{[]string{"import", "v", img, "--offset", "-1"}, `invalid size "-1"`},
		{[]string{"snapshot", "v"}, `"v": want VOL@SNAP`},
		{[]string{"rollback", "v"}, `"v": want VOL@SNAP`},
		{[]string{"create", "c", "--from", "v"}, `"v": want VOL@SNAP`},
		{[]string{"info", "v@s"}, "want a volume name, not a snapshot"},
		{[]string{"import", "v@s", img}, "want a volume name, not a snapshot"},
		{[]string{"resize", "v@s", "1M"}, "want a volume name, not a snapshot"},
		{[]string{"flatten", "v@s"}, "want a volume name, not a snapshot"},
		{[]string{"fill", "v", "--rate", "fast"}, `invalid size "fast"`},
		{[]string{"fill", "v@s"}, "want a volume name, not a snapshot"},
		{[]string{"pull", "127.0.0.1:1/r:v1", "v", "--mirror", "ftp://m"}, "--mirror: url"},
		{[]string{"fill", "v", "--mirror", "http://me:pw@m"}, "credentials do not belong in a URL"},
		// serve checks --nbd before it opens anything.
		{[]string{"serve", "v", "--nbd", "foo:bar"}, "--nbd wants unix:PATH or tcp:HOST:PORT"},
		{[]string{"serve", "v", "--nbd", "unix:"}, "needs a path"},
		{[]string{"serve", "v", "--nbd", "tcp:8.8.8.8:10809"}, "loopback"},
		{[]string{"serve", "v", "--nbd", "tcp:nocolon"}, "--nbd tcp:nocolon"},
		{[]string{"serve", "v@s", "--nbd", "unix:/tmp/x.sock"}, "want a volume name, not a snapshot"},
	}
	for _, c := range cases {
		r := h.run(c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.msg) || r.stdout != "" {
			t.Errorf("want exit 2, nothing on stdout, and %q on stderr\n%s", c.msg, r)
		}
		// With --json given first: pflag stops at a bad flag, so a --json
		// after it would not be seen.
		msg := h.jsonErr(2, "usage", c.args...)
		if !strings.Contains(msg, c.msg) {
			t.Errorf("obdvol --json %v: message %q does not say %q", c.args, msg, c.msg)
		}
	}
	t.Run("unknown command", func(t *testing.T) {
		h := &cliHost{t: t, root: h.root}
		r := h.run("bogus")
		if r.code != 2 || !strings.Contains(r.stderr, `unknown command "bogus"`) {
			t.Errorf("want exit 2: unknown command\n%s", r)
		}
		h.jsonErr(2, "usage", "bogus")
	})
	if m := h.json("list"); len(jget(t, m, "volumes").([]any)) != 0 {
		t.Errorf("usage errors created volumes: %v", m)
	}

	// export to - cannot be JSON (checked before anything is opened).
	h.ok("create", "v", "--size", "1M")
	h.jsonErr(2, "usage", "export", "v", "-")

	// help and the ls alias are no errors.
	if r := h.ok("--help"); !strings.Contains(r.stdout, "Exit codes: 0 ok, 1 error, 2 usage error.") {
		t.Errorf("help:\n%s", r.stdout)
	}
	h.ok("ls")
	if r := h.ok("version"); !strings.HasPrefix(r.stdout, "obdvol ") || !strings.Contains(r.stdout, "layer format") {
		t.Errorf("version says %q", r.stdout)
	}
	m := h.json("version")
	if jstr(t, m, "obdvol") == "" || jint(t, m, "layer_format") < 1 || !strings.HasPrefix(jstr(t, m, "go"), "go") {
		t.Errorf("version --json: %v", m)
	}
}

// Invalid names are refused with a clear message, and nothing is created
// for them, under --root or beside it.
func TestCLIInvalidNames(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	h.ok("create", "good", "--size", "1M")
	h.ok("snapshot", "good@s")
	img := writeFile(t, "img", bytes.Repeat([]byte{7}, 4096))
	out := filepath.Join(t.TempDir(), "out.img")
	before := tree(t, filepath.Dir(h.root))

	bad := []string{"../x", "a/b", "a@b@c", "", "x y", ".x", "_x", "sn\u00e4p", strings.Repeat("n", 129)}
	for _, n := range bad {
		cmds := [][]string{
			{"create", n, "--size", "1M"},
			{"create", n, "--from", "good@s"},
			{"create", "c", "--from", "good@" + n},
			{"create", "c", "--from", n + "@s"},
			{"snapshot", "good@" + n},
			{"snapshot", n + "@s"},
			{"import", n, img},
			{"export", n, out},
			{"export", "good@" + n, out},
			{"info", n},
			{"delete", n},
			{"delete", "good@" + n},
			{"rollback", "good@" + n},
			{"resize", n, "2M"},
			{"flatten", n},
			{"verify", n},
		}
		if n != "" {
			cmds = append(cmds, []string{"create", "c", "--from", n})
		}
		for _, args := range cmds {
			r := h.run(args...)
			if r.code != 2 && r.code != 1 || !strings.Contains(r.stderr, "name") {
				t.Errorf("want exit 2 (or 1) and a message about the name\n%s", r)
			}
		}
	}
	for _, n := range []string{"../x", "a/b", "a@b@c"} {
		h.jsonErr(2, "usage", "create", n, "--size", "1M")
	}
	if after := tree(t, filepath.Dir(h.root)); !slices.Equal(before, after) {
		t.Errorf("invalid names changed the files:\nbefore %v\nafter  %v", before, after)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("an export with an invalid name wrote %s", out)
	}
	m := h.json("list")
	if len(jget(t, m, "volumes").([]any)) != 1 || jstr(t, m, "volumes", 0, "name") != "good" {
		t.Errorf("list: %v", m)
	}
}

// tree lists every path under dir (the catalogue's contents aside).
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		paths = append(paths, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// Errors about what is (not) in the catalogue exit 1, with JSON kinds.
func TestCLICatalogueErrors(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	h.ok("create", "v", "--size", "1M")
	h.ok("snapshot", "v@s")
	out := filepath.Join(t.TempDir(), "out.img")
	img := writeFile(t, "img", make([]byte, 4096))
	for _, args := range [][]string{
		{"info", "nope"},
		{"export", "nope", out},
		{"export", "v@nosnap", out},
		{"export", "nope@s", "-"},
		{"import", "nope", img},
		{"snapshot", "nope@s"},
		{"delete", "nope"},
		{"delete", "v@nosnap"},
		{"rollback", "v@nosnap"},
		{"rollback", "nope@s"},
		{"create", "c", "--from", "v@nosnap"},
		{"create", "c", "--from", "nope@s"},
		{"resize", "nope", "2M"},
		{"flatten", "nope"},
		{"verify", "nope"},
		{"verify", "v@nosnap"},
	} {
		h.fails(1, []string{"not found"}, args...)
		if args[len(args)-1] != "-" { // --json with export to - is a usage error
			h.jsonErr(1, "not_found", args...)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed export created %s", out)
	}
	if m := h.json("list"); len(jget(t, m, "volumes").([]any)) != 1 {
		t.Errorf("failed commands created volumes: %v", m)
	}

	h.fails(1, []string{"volume v", "exists"}, "create", "v", "--size", "1M")
	h.jsonErr(1, "exists", "create", "v", "--size", "1M")
	h.jsonErr(1, "exists", "create", "v", "--from", "v@s")
	h.fails(1, []string{"v@s", "exists"}, "snapshot", "v@s")
	h.jsonErr(1, "exists", "snapshot", "v@s")

	// Sizes the volume layer refuses: not a multiple of the block size, 0.
	h.jsonErr(1, "range", "create", "w", "--size", "1000")
	h.jsonErr(1, "range", "create", "w", "--size", "0")
	h.jsonErr(1, "range", "resize", "v", "5000")
	// Flag values the layer format refuses are usage errors, each named.
	h.fails(2, []string{"block size 1000: want a power of two"}, "create", "w", "--size", "1M", "--block-size", "1000")
	h.fails(2, []string{"block size 3: want a power of two"}, "create", "w", "--size", "1M", "--block-size", "3")
	h.fails(2, []string{"chunk size 3: want a multiple of the block size"}, "create", "w", "--size", "1M", "--chunk-size", "3")
	h.fails(2, []string{"codec"}, "create", "w", "--size", "1M", "--codec", "lzma")
	if m := h.json("list"); len(jget(t, m, "volumes").([]any)) != 1 {
		t.Errorf("refused creates made volumes: %v", m)
	}
	h.fails(1, []string{"no such file"}, "import", "v", filepath.Join(t.TempDir(), "missing"))
}

// An image that does not fit is refused before anything is written.
func TestCLIImportTooLarge(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	rng := rand.New(rand.NewSource(2))
	h.ok("create", "v", "--size", "1M")
	disk := make([]byte, mib)
	a := randomImage(rng, 512<<10, func(b int) bool { return b%5 == 0 })
	h.ok("import", "v", writeFile(t, "a", a))
	copy(disk, a)
	h.ok("snapshot", "v@s")
	snap := slices.Clone(disk)
	b := randomImage(rng, 4096, func(int) bool { return false })
	h.ok("import", "v", writeFile(t, "b", b), "--offset", "800K")
	copy(disk[800<<10:], b)
	h.wantDisk("v", disk)
	writable := jint(t, h.json("info", "v"), "volume", "writable_bytes")

	big := randomImage(rng, mib+1, func(int) bool { return false })
	bigFile := writeFile(t, "big", big)
	h.fails(1, []string{"does not fit", "1048577 bytes"}, "import", "v", bigFile)
	h.jsonErr(1, "", "import", "v", bigFile)
	mid := writeFile(t, "mid", big[:300<<10])
	h.fails(1, []string{"does not fit"}, "import", "v", mid, "--offset", "800K")
	h.fails(1, []string{"does not fit"}, "import", "v", writeFile(t, "one", b[:1]), "--offset", "1M")
	h.fails(1, []string{"does not fit"}, "import", "v", writeFile(t, "one", b[:1]), "--offset", "2M")
	h.wantDisk("v", disk)
	h.wantDisk("v@s", snap)
	if got := jint(t, h.json("info", "v"), "volume", "writable_bytes"); got != writable {
		t.Errorf("writable layer grew from %d to %d bytes", writable, got)
	}
	// What fits exactly is fine, a partial last block included.
	h.ok("import", "v", writeFile(t, "tail", big[:1000]), "--offset", "1047576")
	copy(disk[mib-1000:], big[:1000])
	h.wantDisk("v", disk)
	// A stream (not a regular file) that turns out too large fails too.
	r := h.runStdin(bytes.NewReader(big), "import", "v", "/dev/stdin")
	if r.code != 1 || !strings.Contains(r.stderr, "larger than the volume") {
		t.Errorf("want exit 1: input is larger than the volume\n%s", r)
	}
}

// A bad size in gc --cache-max or --lazy-cache-max is a usage error, found
// before anything is removed.
func TestCLIBadCacheMax(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	h.ok("create", "v", "--size", "1M")
	h.ok("import", "v", writeFile(t, "img", bytes.Repeat([]byte{9}, 8192)))
	m := h.json("snapshot", "v@s")
	blob := blobPath(h.root, jstr(t, m, "layer", "digest"))
	h.ok("delete", "v")
	t.Run("gc --cache-max", func(t *testing.T) {
		h := &cliHost{t: t, root: h.root}
		h.fails(2, []string{`invalid size "10X"`}, "gc", "--cache-max", "10X")
		if _, err := os.Stat(blob); err != nil {
			t.Fatalf("gc refused for its flags removed a blob: %v", err)
		}
		h.jsonErr(2, "usage", "gc", "--cache-max", "10X")
		if _, err := os.Stat(blob); err != nil {
			t.Errorf("a gc refused for its flags removed a blob: %v", err)
		}
	})
	t.Run("--lazy-cache-max", func(t *testing.T) {
		h := &cliHost{t: t, root: h.root}
		r := h.run("list", "--lazy-cache-max", "10X")
		if r.code != 2 || !strings.Contains(r.stderr, `invalid size "10X"`) {
			t.Errorf("want exit 2: invalid size\n%s", r)
		}
		h.jsonErr(2, "usage", "list", "--lazy-cache-max", "10X")
		// Refused before the command ran: nothing was created.
		h.fails(2, []string{"--lazy-cache-max"}, "create", "w", "--size", "1M", "--lazy-cache-max", "10X")
		if m := h.json("list"); len(jget(t, m, "volumes").([]any)) != 0 {
			t.Errorf("a command refused for --lazy-cache-max ran: %v", m)
		}
	})
}
