package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdvol/obdvol/daemon"
	"github.com/obdvol/obdvol/device/ublk"
	"github.com/obdvol/obdvol/internal/unixsock"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/volume"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

// captureStdio runs fn with os.Stdout and os.Stderr going to pipes and
// returns what it wrote there. Tests using it must not run in parallel.
func captureStdio(t *testing.T, fn func()) (stdout, stderr string) {
	t.Helper()
	read := func(f **os.File) func() string {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		old := *f
		*f = w
		done := make(chan string)
		go func() {
			b, _ := io.ReadAll(r)
			r.Close()
			done <- string(b)
		}()
		return func() string {
			*f = old
			w.Close()
			return <-done
		}
	}
	endOut := read(&os.Stdout)
	endErr := read(&os.Stderr)
	defer func() { stderr, stdout = endErr(), endOut() }()
	fn()
	return
}

// report maps errors to exit codes and to one message, as text on stderr
// or as a JSON error object on stdout.
func TestReport(t *testing.T) {
	for _, c := range []struct {
		err  error
		code int
		kind string
	}{
		{usagef("bad %s", "call"), 2, "usage"},
		{fmt.Errorf("parsing: %w", usageError{metadata.ErrInvalidName}), 2, "usage"},
		{errors.New("boom"), 1, "error"},
		{fmt.Errorf("volume x: %w", metadata.ErrNotFound), 1, "not_found"},
		{fmt.Errorf("volume x: %w", metadata.ErrExists), 1, "exists"},
		{fmt.Errorf("name: %w", metadata.ErrInvalidName), 1, "invalid_name"},
		{fmt.Errorf("volume x is in use by process 1: %w", volume.ErrInUse), 1, "busy"},
		{fmt.Errorf("catalogue: %w", metadata.ErrBusy), 1, "busy"},
		{fmt.Errorf("use --force: %w", volume.ErrRefused), 1, "refused"},
		{fmt.Errorf("1 of 1 layers failed verification: %w", volume.ErrCorrupt), 1, "corrupt"},
		{fmt.Errorf("%w: size 0", volume.ErrRange), 1, "range"},
		{fmt.Errorf("export: %w", context.Canceled), 1, "interrupted"},
		{&daemon.RemoteError{Msg: "server says no", Kind: "refused"}, 1, "refused"},
		// Every sentinel a command can return has its kind.
		{fmt.Errorf("layer x: %w: chunk 3", snapshot.ErrChecksum), 1, "corrupt"},
		{fmt.Errorf("layer x: %w: bad trailer magic", snapshot.ErrFormat), 1, "corrupt"},
		{fmt.Errorf("catalogue c: %w", metadata.ErrCorrupt), 1, "corrupt"},
		{fmt.Errorf("blob: %w", repo.ErrDigestMismatch), 1, "corrupt"},
		{fmt.Errorf("catalogue c: %w", metadata.ErrSchema), 1, "unsupported"},
		{fmt.Errorf("%w: layer x: config says", repo.ErrArtifact), 1, "invalid_artifact"},
		{fmt.Errorf("read: %w", volume.ErrClosed), 1, "closed"},
		{fmt.Errorf("activate: %w", ublk.ErrNotRoot), 1, "permission"},
		{fmt.Errorf("socket s: %w", unixsock.ErrInUse), 1, "busy"},
		{fmt.Errorf("socket s: %w", unixsock.ErrNotSocket), 1, "exists"},
		{fmt.Errorf("blob b: %w", repo.ErrUnauthorized), 1, "unauthorized"},
		{fmt.Errorf("push: %w", &errcode.ErrorResponse{Method: "PUT", URL: &url.URL{Path: "/v2/x"}, StatusCode: 401}), 1, "unauthorized"},
	} {
		if got := errorKind(c.err); got != c.kind {
			t.Errorf("errorKind(%v) = %q, want %q", c.err, got, c.kind)
		}
		var code int
		stdout, stderr := captureStdio(t, func() { code = report(c.err, false) })
		if code != c.code || stdout != "" || stderr != "obdvol: "+c.err.Error()+"\n" {
			t.Errorf("report(%v) = %d, stdout %q, stderr %q; want %d and the message on stderr", c.err, code, stdout, stderr, c.code)
		}
		stdout, stderr = captureStdio(t, func() { code = report(c.err, true) })
		if code != c.code || stderr != "" {
			t.Errorf("report(%v, json) = %d, stderr %q", c.err, code, stderr)
		}
		m := decodeOne(t, cliResult{stdout: stdout})
		if jstr(t, m, "error", "kind") != c.kind || jint(t, m, "error", "exit_code") != int64(c.code) || jstr(t, m, "error", "message") != c.err.Error() {
			t.Errorf("report(%v, json) printed %s", c.err, stdout)
		}
	}
	stdout, stderr := captureStdio(t, func() {
		if code := report(nil, true); code != 0 {
			t.Errorf("report(nil) = %d", code)
		}
	})
	if stdout != "" || stderr != "" {
		t.Errorf("report(nil) printed %q, %q", stdout, stderr)
	}
}

// execute runs obdvol in this process, as main does, and returns what the
// command printed, the exit code report gives its error, and what report
// printed.
func execute(t *testing.T, ctx context.Context, args ...string) (out string, code int, msg string) {
	t.Helper()
	cmd, opts := newRootCommand()
	var buf bytes.Buffer
	cmd.SetOut(&buf)
	cmd.SetErr(&buf)
	cmd.SetArgs(args)
	var err error
	stdout, stderr := captureStdio(t, func() {
		err = cmd.ExecuteContext(ctx)
		code = report(err, opts.JSON)
	})
	return buf.String(), code, stdout + stderr
}

// The commands through newRootCommand and ExecuteContext, as main runs
// them: output on the command's writer, errors mapped by report.
func TestExecuteInProcess(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	g := []string{"--root", root, "--no-progress"}
	run := func(args ...string) string {
		t.Helper()
		out, code, msg := execute(t, ctx, append(g, args...)...)
		if code != 0 {
			t.Fatalf("obdvol %v: exit %d: %s", args, code, msg)
		}
		return out
	}
	if out := run("create", "v", "--size", "1M"); out != "created volume v (1M)\n" {
		t.Errorf("create says %q", out)
	}
	img := randomImage(rand.New(rand.NewSource(5)), 300000, func(b int) bool { return b%7 == 3 })
	imgFile := writeFile(t, "img", img)
	run("import", "v", imgFile, "--offset", "4K")
	want := make([]byte, 1<<20)
	copy(want[4096:], img)

	var snap map[string]any
	if err := json.Unmarshal([]byte(run("--json", "snapshot", "v@s")), &snap); err != nil {
		t.Fatal(err)
	}
	if snap["version"] != float64(1) || !strings.HasPrefix(jstr(t, snap, "layer", "digest"), "sha256:") {
		t.Errorf("snapshot --json: %v", snap)
	}
	f := filepath.Join(t.TempDir(), "out.img")
	var exp map[string]any
	if err := json.Unmarshal([]byte(run("export", "v@s", f, "--json")), &exp); err != nil {
		t.Fatal(err)
	}
	if exp["bytes"] != float64(1<<20) || exp["source"] != "v@s" {
		t.Errorf("export --json: %v", exp)
	}
	got, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "export v@s", got, want)

	// Usage errors: exit 2, whatever the command.
	for _, args := range [][]string{
		{"create", "w", "--size", "10X"},
		{"create", "w", "--bogus"},
		{"info"},
		{"snapshot", "v"},
		{"create", "../x", "--size", "1M"},
	} {
		_, code, msg := execute(t, ctx, append(g, args...)...)
		if code != 2 || !strings.HasPrefix(msg, "obdvol: ") {
			t.Errorf("obdvol %v: exit %d, %q; want 2", args, code, msg)
		}
	}
	_, code, msg := execute(t, ctx, append(g, "--json", "info", "nope")...)
	if code != 1 || !strings.Contains(msg, `"kind":"not_found"`) {
		t.Errorf("info nope: exit %d, %q", code, msg)
	}

	// An interrupted import writes nothing and says so.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, code, msg = execute(t, cctx, append(g, "--json", "import", "v", writeFile(t, "ones", bytes.Repeat([]byte{1}, 8192)))...)
	if code != 1 || !strings.Contains(msg, `"kind":"interrupted"`) {
		t.Errorf("import with a cancelled context: exit %d, %q", code, msg)
	}
	run("export", "v", f, "--force")
	got, err = os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "export v after an interrupted import", got, want)
}
