package main

// Helpers for the end-to-end CLI tests: TestMain builds the obdvol binary
// once; cliHost runs it against a private --root and decodes its output.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"
)

// obdvolBin is the binary TestMain built from this package.
var obdvolBin string

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "obdvol-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	obdvolBin = filepath.Join(dir, "obdvol")
	args := []string{"build", "-o", obdvolBin}
	if raceEnabled() {
		// The CLI processes then get the race detector too; the packages
		// are already built with -race for this test binary.
		args = append(args, "-race")
	}
	cmd := exec.Command(goTool(), append(args, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building obdvol for the CLI tests: %v\n", err)
		return 1
	}
	daemonExe = func() (string, error) { return obdvolBin, nil }
	return m.Run()
}

func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(build.Default.GOROOT, "bin", "go")
}

// cliEnv is the environment of a CLI process: ours, less every OBDVOL_
// variable, so that only the flags a test passes matter. A binary built
// with -race would sleep a second at every exit without atexit_sleep_ms=0.
func cliEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "OBDVOL_") || strings.HasPrefix(kv, "GORACE=")
	})
	return append(env, "GORACE=atexit_sleep_ms=0")
}

// cliHost is one state directory driven through the obdvol binary.
type cliHost struct {
	t    *testing.T
	root string
}

// newCLI returns a host whose --root does not exist yet, inside a private
// temporary directory (so a test can check nothing was written beside it).
func newCLI(t *testing.T) *cliHost {
	return &cliHost{t: t, root: filepath.Join(t.TempDir(), "root")}
}

type cliResult struct {
	args           []string
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r cliResult) String() string {
	return fmt.Sprintf("obdvol %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, trim(r.stdout), r.stderr)
}

func trim(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "..."
	}
	return s
}

// command prepares obdvol --root ROOT --no-progress args...
func (h *cliHost) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, obdvolBin, append([]string{"--root", h.root, "--no-progress"}, args...)...)
	cmd.Env = cliEnv()
	return cmd
}

// run runs obdvol with args and returns what it printed and its exit code.
func (h *cliHost) run(args ...string) cliResult { return h.runStdin(nil, args...) }

func (h *cliHost) runStdin(stdin io.Reader, args ...string) cliResult {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := h.command(ctx, args...)
	// Stdout goes to a file: an export to - writes whole disks there.
	out, err := os.CreateTemp("", "obdvol-test-stdout-")
	if err != nil {
		h.t.Fatal(err)
	}
	defer os.Remove(out.Name())
	defer out.Close()
	var errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, out, &errb
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start)
	stdout, rerr := os.ReadFile(out.Name())
	if rerr != nil {
		h.t.Fatal(rerr)
	}
	r := cliResult{args: args, stdout: string(stdout), stderr: errb.String(), took: took}
	if strings.Contains(r.stderr, "WARNING: DATA RACE") {
		h.t.Errorf("the race detector reports a data race in\n%s", r)
	}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		h.t.Fatalf("obdvol %s: timed out\n%s", strings.Join(args, " "), r)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		h.t.Fatalf("obdvol %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// ok runs obdvol and fails the test unless it exits 0.
func (h *cliHost) ok(args ...string) cliResult {
	h.t.Helper()
	r := h.run(args...)
	if r.code != 0 {
		h.t.Fatalf("want exit 0\n%s", r)
	}
	return r
}

// fails runs obdvol and fails the test unless it exits with code and says
// on stderr every one of msgs.
func (h *cliHost) fails(code int, msgs []string, args ...string) cliResult {
	h.t.Helper()
	r := h.run(args...)
	if r.code != code {
		h.t.Fatalf("want exit %d\n%s", code, r)
	}
	if !strings.HasPrefix(r.stderr, "obdvol: ") {
		h.t.Errorf("want an error message on stderr starting with \"obdvol: \"\n%s", r)
	}
	for _, m := range msgs {
		if !strings.Contains(r.stderr, m) {
			h.t.Errorf("want stderr to mention %q\n%s", m, r)
		}
	}
	return r
}

// json runs obdvol --json args..., wants exit 0 and one JSON object with
// version 1 on stdout, and returns it (numbers as json.Number). --json
// comes first: pflag stops parsing at a bad flag or takes it as a value.
func (h *cliHost) json(args ...string) map[string]any {
	h.t.Helper()
	r := h.run(append([]string{"--json"}, args...)...)
	if r.code != 0 {
		h.t.Fatalf("want exit 0\n%s", r)
	}
	return decodeOne(h.t, r)
}

// jsonErr runs obdvol --json args..., wants exit code, nothing on stderr
// and a JSON error object of kind (any kind for "") on stdout; it returns
// the message.
func (h *cliHost) jsonErr(code int, kind string, args ...string) string {
	h.t.Helper()
	r := h.run(append([]string{"--json"}, args...)...)
	if r.code != code {
		h.t.Fatalf("want exit %d\n%s", code, r)
	}
	if r.stderr != "" {
		h.t.Errorf("want nothing on stderr with --json\n%s", r)
	}
	m := decodeOne(h.t, r)
	if got := jstr(h.t, m, "error", "kind"); kind != "" && got != kind {
		h.t.Errorf("error kind %q, want %q\n%s", got, kind, r)
	}
	if got := jint(h.t, m, "error", "exit_code"); got != int64(code) {
		h.t.Errorf("error exit_code %d, want %d\n%s", got, code, r)
	}
	msg := jstr(h.t, m, "error", "message")
	if msg == "" {
		h.t.Errorf("empty error message\n%s", r)
	}
	return msg
}

// decodeOne decodes exactly one JSON object from r's stdout and checks its
// version field.
func decodeOne(t *testing.T, r cliResult) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, r)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value on stdout\n%s", r)
	}
	if v := jint(t, m, "version"); v != 1 {
		t.Fatalf("JSON version %d, want 1\n%s", v, r)
	}
	return m
}

// jget walks a decoded JSON value by object keys (string) and array
// indexes (int); it fails the test where the path does not exist.
func jget(t *testing.T, v any, path ...any) any {
	t.Helper()
	for i, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("JSON path %v: %v is not an object", path[:i+1], v)
			}
			if v, ok = m[k]; !ok {
				t.Fatalf("JSON path %v: no key %q in %v", path[:i+1], k, m)
			}
		case int:
			a, ok := v.([]any)
			if !ok || k >= len(a) {
				t.Fatalf("JSON path %v: %v is not an array of more than %d elements", path[:i+1], v, k)
			}
			v = a[k]
		}
	}
	return v
}

// jint wants a JSON number (not a string) that is an integer.
func jint(t *testing.T, v any, path ...any) int64 {
	t.Helper()
	n, ok := jget(t, v, path...).(json.Number)
	if !ok {
		t.Fatalf("JSON path %v: %#v is not a number", path, jget(t, v, path...))
	}
	i, err := n.Int64()
	if err != nil {
		t.Fatalf("JSON path %v: %v", path, err)
	}
	return i
}

func jstr(t *testing.T, v any, path ...any) string {
	t.Helper()
	s, ok := jget(t, v, path...).(string)
	if !ok {
		t.Fatalf("JSON path %v: %#v is not a string", path, jget(t, v, path...))
	}
	return s
}

// jstrs wants an array of strings (an empty array, not null, for none).
func jstrs(t *testing.T, v any, path ...any) []string {
	t.Helper()
	a, ok := jget(t, v, path...).([]any)
	if !ok {
		t.Fatalf("JSON path %v: %#v is not an array", path, jget(t, v, path...))
	}
	out := []string{}
	for i := range a {
		out = append(out, jstr(t, a, i))
	}
	return out
}

// exportFile exports ref to a new file and returns its bytes.
func (h *cliHost) exportFile(ref string) []byte {
	h.t.Helper()
	f := filepath.Join(h.t.TempDir(), "export.img")
	r := h.ok("export", ref, f)
	if !strings.Contains(r.stdout, "exported "+ref) {
		h.t.Errorf("export says %q", r.stdout)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

// exportStdout exports ref to - and returns what obdvol wrote to stdout.
func (h *cliHost) exportStdout(ref string) []byte {
	h.t.Helper()
	r := h.run("export", ref, "-")
	if r.code != 0 {
		h.t.Fatalf("want exit 0\nobdvol export %s -: exit %d: %s", ref, r.code, r.stderr)
	}
	return []byte(r.stdout)
}

// wantDisk checks that ref exports (to a file and to stdout) as want.
func (h *cliHost) wantDisk(ref string, want []byte) {
	h.t.Helper()
	sameBytes(h.t, ref+" exported to a file", h.exportFile(ref), want)
	sameBytes(h.t, ref+" exported to stdout", h.exportStdout(ref), want)
}

func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: first difference at byte %d (block %d): %#x, want %#x", what, i, i/4096, got[i], want[i])
		}
	}
}

// writeFile writes b to a new file and returns its path.
const mib = 1 << 20

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// randomImage returns n random bytes in which every block (of 4K) whose
// index is in zero is all zeros. A partial tail stays random.
func randomImage(rng *rand.Rand, n int, zero func(block int) bool) []byte {
	b := make([]byte, n)
	rng.Read(b)
	for blk := 0; blk*4096 < n; blk++ {
		if zero(blk) {
			clear(b[blk*4096 : min(n, (blk+1)*4096)])
		}
	}
	return b
}

// blobPath is where the content store keeps the blob of digest.
func blobPath(root, digest string) string {
	return filepath.Join(root, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
}
