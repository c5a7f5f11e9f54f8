package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/obdvol/obdvol/daemon"
	"github.com/obdvol/obdvol/volume"
)

// The CLI side of the control sockets (package daemon serves them).
//
// A request about one volume (snapshot, flush, status) goes to the
// process that owns it through --root/run/<vol>.sock: the daemon answers
// there for every volume it serves, and so does obdvol serve
// --foreground, so the CLI needs no idea which kind of owner it has.
// The daemon's own socket (--root/run/daemon.sock) is asked when the
// volume's is missing (the daemon could not create it).

// askOwner sends req to the process that owns vol. It fails with
// daemon.ErrNotRunning (wrapped) when nobody answers.
func askOwner(ctx context.Context, root, vol string, req *daemon.Request) (*daemon.Response, error) {
	resp, err := daemon.AskVolume(ctx, root, vol, req)
	if !errors.Is(err, daemon.ErrNotRunning) {
		return resp, err
	}
	req.Volume = vol
	return (&daemon.Client{Root: root}).Do(ctx, req)
}

// withOwner runs local with the volume opened here, or, when another
// process owns it and answers on a control socket, remote.
func withOwner(e *env, name string, local func(*volume.Volume) error, remote func() error) error {
	v, err := e.openVolume(name)
	if errors.Is(err, volume.ErrInUse) {
		if rerr := remote(); !errors.Is(rerr, daemon.ErrNotRunning) {
			return rerr
		}
		return err
	}
	if err != nil {
		return err
	}
	defer v.Close()
	return local(v)
}

// daemonExe is the binary started as the daemon (tests point it at the
// obdvol they built).
var daemonExe = os.Executable

// ensureDaemon returns a client of the root's daemon, starting one
// detached (its own session, log under --root/run/daemon.log) when none
// runs. started tells whether this call started it. A daemon that holds
// the root's lock but does not answer (another command's, restoring the
// recorded activations before it listens; or one stopping) is waited for:
// the start is retried until one answers, for at most a minute.
func ensureDaemon(ctx context.Context, g *globalOptions, root string) (c *daemon.Client, started bool, err error) {
	c = &daemon.Client{Root: root}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c.Running(ctx) {
			return c, false, nil
		}
		msg, logPath, err := spawnDaemon(ctx, g, root)
		switch {
		case err != nil:
			return nil, false, err
		case msg == "OK":
			return c, true, nil
		case !strings.Contains(msg, daemon.ErrRunning.Error()):
			return nil, false, fmt.Errorf("starting the obdvol daemon failed: %s (log %s)", strings.TrimPrefix(msg, "ERR "), logPath)
		case time.Now().After(deadline):
			return nil, false, fmt.Errorf("an obdvol daemon holds %s but did not answer in 60s (log %s)", root, logPath)
		}
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// spawnDaemon starts obdvol daemon detached and returns the line it
// wrote on its notify pipe: "OK" once its control socket answers, or
// "ERR message".
func spawnDaemon(ctx context.Context, g *globalOptions, root string) (msg, logPath string, err error) {
	self, err := daemonExe()
	if err != nil {
		return "", "", err
	}
	logPath = filepath.Join(root, "run", "daemon.log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return "", logPath, err
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return "", logPath, err
	}
	defer lf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return "", logPath, err
	}
	defer pr.Close()
	args := []string{"--root", root, "--no-progress", "--remote-timeout", g.RemoteTimeout.String(), "daemon", "--notify-fd", "3"}
	if g.DevDir != "" {
		args = append(args, "--dev-dir", g.DevDir)
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.ExtraFiles = []*os.File{pw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return "", logPath, err
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(pr).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case msg = <-line:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return "", logPath, fmt.Errorf("the obdvol daemon did not start in 60s (log %s)", logPath)
	case <-ctx.Done():
		return "", logPath, ctx.Err()
	}
	if msg == "OK" {
		cmd.Process.Release()
		return msg, logPath, nil
	}
	cmd.Wait()
	if msg == "" {
		b, _ := os.ReadFile(logPath)
		msg = "ERR " + lastLine(string(b))
	}
	return msg, logPath, nil
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}
