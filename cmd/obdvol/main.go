// Command obdvol manages volumes made of snapshot chains.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/obdvol/obdvol/daemon"
	"github.com/obdvol/obdvol/device/ublk"
	"github.com/obdvol/obdvol/internal/unixsock"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/volume"
)

// Exit codes, listed in the root command's help.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError marks errors in how obdvol was called (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(f string, a ...any) error { return usageError{fmt.Errorf(f, a...)} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, opts := newRootCommand()
	err := root.ExecuteContext(ctx)
	os.Exit(report(err, opts.JSON))
}

// report is the one place errors become messages and exit codes.
func report(err error, asJSON bool) int {
	if err == nil {
		return exitOK
	}
	code := exitError
	var ue usageError
	if errors.As(err, &ue) {
		code = exitUsage
	}
	if asJSON {
		json.NewEncoder(os.Stdout).Encode(map[string]any{
			"version": jsonVersion,
			"error":   map[string]any{"message": err.Error(), "kind": errorKind(err), "exit_code": code},
		})
	} else {
		fmt.Fprintf(os.Stderr, "obdvol: %v\n", err)
	}
	return code
}

// errorKind names an error class for scripts reading --json output. It
// is the one place sentinel errors of every package become kinds; a
// sentinel a command can return and that is missing here shows up as
// "error".
func errorKind(err error) string {
	var ue usageError
	var re *daemon.RemoteError
	switch {
	case errors.As(err, &ue), errors.Is(err, daemon.ErrBadRequest):
		return "usage"
	case errors.As(err, &re):
		return re.Kind
	case errors.Is(err, daemon.ErrRunning):
		return "busy"
	case errors.Is(err, daemon.ErrNotRunning):
		return "not_running"
	case errors.Is(err, daemon.ErrPeer):
		return "permission"
	case errors.Is(err, context.Canceled):
		return "interrupted"
	case errors.Is(err, metadata.ErrNotFound):
		return "not_found"
	case errors.Is(err, metadata.ErrExists), errors.Is(err, unixsock.ErrNotSocket):
		return "exists"
	case errors.Is(err, metadata.ErrInvalidName):
		return "invalid_name"
	case errors.Is(err, volume.ErrInUse), errors.Is(err, metadata.ErrBusy), errors.Is(err, unixsock.ErrInUse):
		return "busy"
	case errors.Is(err, volume.ErrRefused):
		return "refused"
	case errors.Is(err, volume.ErrCorrupt), errors.Is(err, metadata.ErrCorrupt),
		errors.Is(err, snapshot.ErrChecksum), errors.Is(err, snapshot.ErrFormat),
		errors.Is(err, repo.ErrDigestMismatch):
		return "corrupt"
	case errors.Is(err, repo.ErrArtifact):
		return "invalid_artifact"
	case errors.Is(err, metadata.ErrSchema):
		return "unsupported"
	case errors.Is(err, volume.ErrRange):
		return "range"
	case errors.Is(err, volume.ErrClosed):
		return "closed"
	case errors.Is(err, ublk.ErrNotRoot), errors.Is(err, os.ErrPermission):
		return "permission"
	case repo.IsUnauthorized(err): // a registry's 401 (oras-go's error responses too)
		return "unauthorized"
	}
	return "error"
}
