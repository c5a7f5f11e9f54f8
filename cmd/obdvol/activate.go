package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/device/ublk"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

type activateOptions struct {
	Foreground bool
	Queues     int
	Depth      int
	ReadOnly   bool
	NotifyFD   int
	Recover    bool
	recoverID  int
}

func newActivateCommand(g *globalOptions) *cobra.Command {
	o := &activateOptions{}
	cmd := &cobra.Command{
		Use:   "activate VOL",
		Short: "Expose a volume as a block device /dev/ublkbN (needs root and the ublk driver)",
		Long: `Start a server for the volume and expose it as /dev/ublkbN through the kernel's ublk
driver. The server runs detached (log under --root/run/) unless --foreground.
While active, obdvol snapshot VOL@SNAP seals the volume inside the server at a flush
point (crash-consistent; freeze the filesystem with fsfreeze first for an
application-consistent snapshot). obdvol deactivate VOL flushes, stops and deletes
the device. Needs root and Linux 6.0+ with ublk_drv loaded; elsewhere use obdvol serve --nbd.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runActivate(cmd.Context(), cmd.OutOrStdout(), g, o, args[0])
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.Foreground, "foreground", false, "stay attached (serve until SIGINT/SIGTERM)")
	f.IntVar(&o.Queues, "queues", 2, "hardware queues")
	f.IntVar(&o.Depth, "depth", 64, "requests in flight per queue")
	f.BoolVar(&o.ReadOnly, "read-only", false, "a read-only device")
	f.IntVar(&o.NotifyFD, "notify-fd", -1, "")
	f.MarkHidden("notify-fd")
	f.BoolVar(&o.Recover, "recover", false, "reattach to the device of a server that died (also done automatically)")
	return cmd
}

func newDeactivateCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "deactivate VOL",
		Short: "Flush, stop and delete a volume's block device",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDeactivate(cmd.Context(), cmd.OutOrStdout(), g, args[0])
		},
	}
}

func runActivate(ctx context.Context, out io.Writer, g *globalOptions, o *activateOptions, vol string) error {
	if _, _, err := parseRef(vol, snapForbidden); err != nil {
		return err
	}
	if err := ublk.Preflight(); err != nil {
		return err // before anything changes
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	// A stale NBD record is cleared here; a stale ublk one is returned.
	d, live, err := e.mgr.Device(vol)
	if err != nil {
		return err
	}
	o.recoverID = -1
	switch {
	case live:
		return fmt.Errorf("volume %s is already active on %s (pid %d): %w", vol, d.Path, d.PID, volume.ErrRefused)
	case d != nil && d.Kind == volume.DeviceUblk:
		// Its server died: the kernel kept the device; reattach.
		o.recoverID = d.ID
	}
	if o.Recover && o.recoverID < 0 {
		return fmt.Errorf("volume %s has no device whose server died: nothing to recover: %w", vol, volume.ErrRefused)
	}
	if !o.Foreground {
		return activateDetached(e, out, g, o, vol)
	}
	var v *volume.Volume
	var dev *ublk.Device
	uopts := ublk.Options{Queues: o.Queues, Depth: o.Depth, ReadOnly: o.ReadOnly}
	if o.recoverID >= 0 {
		if v, _, err = e.mgr.OpenAfterCrash(vol); err != nil {
			return err
		}
		defer v.Close()
		dev, err = ublk.Recover(v, o.recoverID, uopts)
		if errors.Is(err, syscall.ENODEV) {
			// The kernel device went too (a reboot, or it was deleted
			// after its server died): the record was all that was left.
			dev, err = ublk.Start(v, uopts)
		}
		if err != nil {
			return err
		}
	} else {
		if v, err = e.openVolume(vol); err != nil {
			return err
		}
		defer v.Close()
		if dev, err = ublk.Start(v, uopts); err != nil {
			return err
		}
	}
	stopDev := func() error { return dev.Stop() }
	if err := setDevice(e, vol, &metadata.Device{Kind: volume.DeviceUblk, Path: dev.Path, PID: os.Getpid(), ID: dev.ID}); err != nil {
		stopDev()
		return err
	}
	defer setDevice(e, vol, nil)
	stop, err := serveControl(ctx, e.root, v, func() map[string]any {
		return map[string]any{"kind": "ublk", "path": dev.Path, "pid": os.Getpid()}
	})
	if err != nil {
		stopDev()
		return err
	}
	defer stop()
	if o.NotifyFD >= 0 {
		nf := os.NewFile(uintptr(o.NotifyFD), "notify")
		fmt.Fprintf(nf, "OK %s\n", dev.Path)
		nf.Close()
	} else if g.JSON {
		printJSON(out, map[string]any{"volume": vol, "device": dev.Path, "pid": os.Getpid()})
	} else {
		fmt.Fprintf(out, "%s active on %s\n", vol, dev.Path)
	}
	<-ctx.Done()
	return stopDev()
}

// activateDetached re-executes obdvol in its own session to serve the
// volume, and returns once the device exists (or the server failed).
func activateDetached(e *env, out io.Writer, g *globalOptions, o *activateOptions, vol string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	logPath := filepath.Join(e.root, "run", "activate-"+vol+".log")
	os.MkdirAll(filepath.Dir(logPath), 0o700)
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	args := []string{"--root", e.root, "--no-progress", "activate", vol, "--foreground", "--notify-fd", "3",
		fmt.Sprintf("--queues=%d", o.Queues), fmt.Sprintf("--depth=%d", o.Depth), fmt.Sprintf("--read-only=%v", o.ReadOnly)}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.ExtraFiles = []*os.File{pw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return err
	}
	pw.Close()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(pr).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	var msg string
	select {
	case msg = <-line:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		return fmt.Errorf("the server for %s did not start in 60s (log %s)", vol, logPath)
	}
	path, ok := strings.CutPrefix(msg, "OK ")
	if !ok {
		cmd.Wait()
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("activating %s failed: %s", vol, lastLine(string(b)))
	}
	pid := cmd.Process.Pid
	cmd.Process.Release()
	if g.JSON {
		return printJSON(out, map[string]any{"volume": vol, "device": path, "pid": pid, "log": logPath})
	}
	fmt.Fprintf(out, "%s active on %s (server pid %d, log %s)\n", vol, path, pid, logPath)
	return nil
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

func runDeactivate(ctx context.Context, out io.Writer, g *globalOptions, vol string) error {
	if _, _, err := parseRef(vol, snapForbidden); err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	// Liveness is the volume lock's (volume.Manager.Device), never the
	// PID's: a dead server's PID may name another process by now.
	d, live, err := e.mgr.Device(vol)
	if err != nil {
		return err
	}
	switch {
	case d == nil || !live && d.Kind != volume.DeviceUblk:
		return fmt.Errorf("volume %s is not active: %w", vol, volume.ErrRefused)
	case d.Kind != volume.DeviceUblk:
		return fmt.Errorf("volume %s is served over %s by pid %d: stop that server: %w", vol, d.Kind, d.PID, volume.ErrRefused)
	case !live:
		return fmt.Errorf("the server of volume %s (pid %d) died and the kernel keeps %s: run obdvol activate %s to reattach it, then deactivate: %w",
			vol, d.PID, d.Path, vol, volume.ErrRefused)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: deactivate runs as root", ublk.ErrNotRoot)
	}
	if err := syscall.Kill(d.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal server %d: %w", d.PID, err)
	}
	// The server deletes the device, clears the record, then closes the
	// volume (releasing its lock).
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		held, err := e.mgr.HeldBy(vol, d.PID)
		if err != nil {
			return err
		}
		if !held {
			now, _, err := e.mgr.Device(vol)
			if err != nil {
				return err
			}
			if now != nil {
				return fmt.Errorf("the server of %s (pid %d) exited without deleting %s: run obdvol activate %s to reattach it, then deactivate: %w",
					vol, d.PID, d.Path, vol, volume.ErrRefused)
			}
			if g.JSON {
				return printJSON(out, map[string]any{"volume": vol, "device": d.Path, "active": false})
			}
			fmt.Fprintf(out, "%s deactivated (%s removed)\n", vol, d.Path)
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the server of %s (pid %d) did not stop in 60s", vol, d.PID)
}
