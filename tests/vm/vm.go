// Package vm boots a real Linux kernel that has ublk (Debian's 6.12 cloud
// kernel) under qemu with a busybox initramfs, runs programs inside it and
// returns what they print on the serial console. This host's kernel has no
// ublk, so the ublk frontend is tested here, under TCG (slower, fine for
// functional tests).
//
// Two tests use it:
//   - TestBootUblkKernel: the scenarios in scenarios/[1-9]-*.sh drive the
//     real obdvol binary on /dev/ublkbN (activate, live snapshot, rollback,
//     ext4, deactivate under load, kill -9 of the server and recovery).
//     Each check prints OBDVOL-VM-OK NAME only after testing its condition;
//     the host requires every named check's OK and no FAIL or error line.
//   - TestPowerCut: power cuts by CrashMonkey's method (guest/powercut.go):
//     obdvol's --root on ext4 over dm-log-writes, a workload of real obdvol
//     commands, the log replayed to every flush, FUA and mark and each
//     state checked against a model of what was acknowledged. `make
//     powercut` runs it until at least 200 cut points were checked.
package vm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Kernel is an unpacked kernel image and the modules the tests load.
type Kernel struct {
	Vmlinuz string
	UblkKO  string
	// Modules maps a module's name (ublk_drv, dm-mod, dm-flakey,
	// dm-log-writes, brd, loop) to its uncompressed .ko on the host; the
	// initramfs holds each as /lib/modules/NAME.ko.
	Modules map[string]string
}

// modules are the kernel modules copied out of the package: ublk for the
// device tests; device-mapper (flakey, log-writes) and brd (RAM disks)
// for the power-cut tests.
var modules = map[string]string{
	"ublk_drv":      "drivers/block/ublk_drv.ko",
	"brd":           "drivers/block/brd.ko",
	"loop":          "drivers/block/loop.ko",
	"dm-mod":        "drivers/md/dm-mod.ko",
	"dm-flakey":     "drivers/md/dm-flakey.ko",
	"dm-log-writes": "drivers/md/dm-log-writes.ko",
}

// FetchKernel returns the cached kernel under cache, downloading Debian's
// 6.12 cloud kernel package (apt-get download) on first use. The kernel
// image is moved into place last: its presence marks a complete cache.
func FetchKernel(cache string) (*Kernel, error) {
	k := &Kernel{Vmlinuz: filepath.Join(cache, "vmlinuz"), Modules: map[string]string{}}
	complete := fileExists(k.Vmlinuz)
	for name := range modules {
		k.Modules[name] = filepath.Join(cache, "modules", name+".ko")
		complete = complete && fileExists(k.Modules[name])
	}
	k.UblkKO = k.Modules["ublk_drv"]
	if complete {
		return k, nil
	}
	os.Remove(k.Vmlinuz)
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	out, err := exec.Command("apt-cache", "depends", "linux-image-6.12-cloud-amd64").Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache depends linux-image-6.12-cloud-amd64: %w (run apt-get update)", err)
	}
	pkg := ""
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			pkg = f[1]
		}
	}
	if pkg == "" {
		return nil, fmt.Errorf("no linux-image-6.12 cloud kernel package found:\n%s", out)
	}
	dl, err := os.MkdirTemp(cache, "fetch-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dl)
	cmd := exec.Command("apt-get", "download", pkg)
	cmd.Dir = dl
	if o, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, o)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) == 0 {
		return nil, fmt.Errorf("apt-get download %s produced no .deb", pkg)
	}
	x := filepath.Join(dl, "x")
	if o, err := exec.Command("dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x: %v\n%s", err, o)
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(x, "boot", "vmlinuz-*"))
	if len(vmlinuz) == 0 {
		return nil, fmt.Errorf("%s has no boot/vmlinuz-*", pkg)
	}
	if err := os.MkdirAll(filepath.Join(cache, "modules"), 0o755); err != nil {
		return nil, err
	}
	for name, rel := range modules {
		ko, _ := filepath.Glob(filepath.Join(x, "lib", "modules", "*", "kernel", rel+"*"))
		if len(ko) == 0 {
			return nil, fmt.Errorf("%s has no %s", pkg, rel)
		}
		if strings.HasSuffix(ko[0], ".xz") {
			if o, err := exec.Command("xz", "-d", ko[0]).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("xz -d: %v\n%s", err, o)
			}
			ko[0] = strings.TrimSuffix(ko[0], ".xz")
		}
		if err := os.Rename(ko[0], k.Modules[name]); err != nil {
			return nil, err
		}
	}
	if err := os.Rename(vmlinuz[0], k.Vmlinuz); err != nil {
		return nil, err
	}
	return k, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// Initramfs builds a gzipped cpio archive with busybox, the ublk module,
// the given files (guest path -> host path) and an /init that loads the
// module, runs script, and powers off.
func Initramfs(dir string, k *Kernel, files map[string]string, script string) (string, error) {
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "mnt", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("busybox not installed: run make deps (busybox-static)")
	}
	copies := map[string]string{"bin/busybox": bb}
	for name, p := range k.Modules {
		copies["lib/modules/"+name+".ko"] = p
	}
	for g, h := range files {
		copies[g] = h
	}
	for g, h := range copies {
		b, err := os.ReadFile(h)
		if err != nil {
			return "", err
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, g)), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(root, g), b, 0o755); err != nil {
			return "", err
		}
	}
	init := `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
insmod /lib/modules/ublk_drv.ko && echo OBDVOL-VM-UBLK-LOADED
` + script + `
echo OBDVOL-VM-DONE
poweroff -f
`
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "initrd.gz")
	cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet | gzip -1 > "+out)
	cmd.Dir = root
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("cpio: %v\n%s", err, o)
	}
	return out, nil
}

// BootOptions shape the VM.
type BootOptions struct {
	Timeout  time.Duration // default 5 minutes
	MemoryMB int           // default 512
	CPUs     int           // default 2
	Console  io.Writer     // if set, also gets the console output as it comes
	// Disk, if set, is a raw image file on the host attached as an NVMe
	// drive: /dev/nvme0n1 in the guest (the cloud kernel has NVMe built
	// in; virtio_blk is a module it would need first). It outlives the
	// VM: a second boot with the same Disk finds what the first wrote
	// (TestDaemonReboot). SparseDisk makes one.
	Disk string
}

// SparseDisk creates (or truncates to) a sparse raw image of size bytes
// for BootOptions.Disk; the guest formats it.
func SparseDisk(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Boot runs the kernel with the initramfs and returns the console output.
// The console shows kernel messages of level KERN_CRIT and above only
// (loglevel=3): expected I/O errors of a removed device do not reach it,
// scenarios read dmesg where they check for errors.
func Boot(ctx context.Context, k *Kernel, initrd string, o BootOptions) (string, error) {
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 512
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	args := []string{"-m", fmt.Sprint(o.MemoryMB), "-smp", fmt.Sprint(o.CPUs), "-nographic", "-no-reboot",
		"-kernel", k.Vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet loglevel=3"}
	if o.Disk != "" {
		args = append(args, "-drive", "file="+o.Disk+",format=raw,if=none,id=disk0",
			"-device", "nvme,drive=disk0,serial=obdvol0")
	}
	// /dev/kvm exists on these machines but KVM fails inside qemu (MSR
	// errors), so TCG is the default; OBDVOL_VM_KVM=1 opts in.
	if os.Getenv("OBDVOL_VM_KVM") == "1" {
		args = append(args, "-enable-kvm", "-cpu", "host")
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	var out bytes.Buffer
	var w io.Writer = &out
	if o.Console != nil {
		w = io.MultiWriter(&out, o.Console)
	}
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), fmt.Errorf("VM did not finish in %v", o.Timeout)
	}
	return out.String(), err
}

// WithLibs returns guest-path -> host-path entries for the given host
// binaries (placed under /usr/local/bin, where busybox's applets do not
// shadow them) and every shared library ldd lists.
func WithLibs(bins ...string) (map[string]string, error) {
	out := map[string]string{}
	for _, b := range bins {
		p, err := exec.LookPath(b)
		if err != nil {
			return nil, fmt.Errorf("%s not installed: run make deps", b)
		}
		out["usr/local/bin/"+filepath.Base(b)] = p
		ldd, err := exec.Command("ldd", p).Output()
		if err != nil {
			continue // static
		}
		for _, f := range strings.Fields(string(ldd)) {
			if strings.HasPrefix(f, "/") {
				out[strings.TrimPrefix(f, "/")] = f
			}
		}
	}
	return out, nil
}
