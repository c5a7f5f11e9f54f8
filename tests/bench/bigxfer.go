package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The big-transfer part of make bench-fleet: push and pull of an 8 GiB
// snapshot through a local registry with the CLI (bin/obdvol), as one
// blob and split into parts (push --max-blob, when the binary has it),
// side by side with skopeo copy of the same artifact, in interleaved
// rounds. Without --max-blob in the binary the parts rows are skipped and
// say so: the harness runs before and after that flag exists.

var (
	bigMiB  = flag.Int("big-size", envSize("BIG_MIB", 8192), "big transfer bench: snapshot size in MiB (0 skips it; default from $BIG_MIB)")
	bigPart = flag.String("big-part", envStr("BIG_PART", "1G"), "big transfer bench: push --max-blob of the parts rows")
)

// cli runs bin/obdvol --root root --no-progress args and fails the bench
// on an error.
func cli(bin, root string, args ...string) string {
	out, err := exec.Command(bin, append([]string{"--root", root, "--no-progress"}, args...)...).CombinedOutput()
	if err != nil {
		check(fmt.Errorf("obdvol %s: %v\n%s", strings.Join(args, " "), err, out))
	}
	return string(out)
}

// hasFlag reports whether `obdvol CMD --help` lists flag.
func hasFlag(bin, cmd, flag string) bool {
	out, _ := exec.Command(bin, cmd, "--help").CombinedOutput()
	return strings.Contains(string(out), "--"+flag+" ")
}

func bigTransferBench(work, bin string) {
	if *bigMiB <= 0 {
		return
	}
	bin, err := filepath.Abs(bin)
	check(err)
	size := int64(*bigMiB) << 20
	parts := hasFlag(bin, "push", "max-blob")
	fmt.Printf("\n== push and pull of a %d MiB snapshot (bin/obdvol, local registry): one blob vs parts (--max-blob %s) vs skopeo copy (%s)\n",
		*bigMiB, *bigPart, roundsNote())
	if !parts {
		fmt.Println("  (this obdvol has no push --max-blob: the parts rows are skipped)")
	}
	dir := mkdir(work, "big")
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, "A")
	img := filepath.Join(dir, "image.raw")
	start := time.Now()
	check(writeHalfCompressible(img, uint64(size)))
	cli(bin, root, "create", "g", "--size", fmt.Sprint(size))
	cli(bin, root, "import", "g", img)
	os.Remove(img)
	cli(bin, root, "snapshot", "g@v1")
	layout := filepath.Join(dir, "layout")
	cli(bin, root, "push", "g@v1", "oci:"+layout+":v1")
	var stored int64
	filepath.Walk(filepath.Join(layout, "blobs"), func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			stored += fi.Size()
		}
		return nil
	})
	fmt.Printf("  stored %.0f MiB; built in %.0fs\n", float64(stored)/(1<<20), time.Since(start).Seconds())
	oneArgs := []string{}
	if parts {
		oneArgs = []string{"--max-blob", "1T"} // larger than the layer: one blob
	}
	// The pulls read from one registry holding both forms.
	reg, done := freshRegistry(dir)
	defer done()
	cli(bin, root, append([]string{"push", "--plain-http"}, append(oneArgs, "g@v1", reg.Addr+"/one/g:v1")...)...)
	if parts {
		cli(bin, root, "push", "--plain-http", "--max-blob", *bigPart, "g@v1", reg.Addr+"/parts/g:v1")
	}
	pushRow := func(name string, args []string) *series {
		return measure(name, "MB/s", func() float64 {
			r, done := freshRegistry(dir)
			defer done()
			t0 := time.Now()
			cli(bin, root, append(append([]string{"push", "--plain-http"}, args...), "g@v1", r.Addr+"/g:v1")...)
			return float64(stored) / time.Since(t0).Seconds() / 1e6
		})
	}
	pullRow := func(name, repoName string) *series {
		return measure(name, "MB/s", func() float64 {
			d, done := scratch(dir, "pull")
			defer done()
			t0 := time.Now()
			cli(bin, d, "pull", "--plain-http", reg.Addr+"/"+repoName+"/g:v1", "g")
			return float64(stored) / time.Since(t0).Seconds() / 1e6
		})
	}
	pushOne := pushRow("push, one blob", oneArgs)
	pullOne := pullRow("pull, one blob", "one")
	skPush := measure("skopeo push", "MB/s", func() float64 {
		r, done := freshRegistry(dir)
		defer done()
		return mbps(stored, timeCmd("skopeo", "copy", "--dest-tls-verify=false", "oci:"+layout+":v1", "docker://"+r.Addr+"/skopeo/g:v1"))
	})
	skPull := measure("skopeo pull", "MB/s", func() float64 {
		d, done := scratch(dir, "skopeo-pull")
		defer done()
		return mbps(stored, timeCmd("skopeo", "copy", "--src-tls-verify=false", "docker://"+reg.Addr+"/one/g:v1", "oci:"+filepath.Join(d, "out")+":v1"))
	})
	all := []*series{pushOne, skPush, pullOne, skPull}
	if parts {
		pushParts := pushRow("push, parts", []string{"--max-blob", *bigPart})
		pullParts := pullRow("pull, parts", "parts")
		all = []*series{pushOne, pushParts, skPush, pullOne, pullParts, skPull}
		interleave(all...)
		printSeries(all...)
		printRatio(pushParts, pushOne, nil)
		printRatio(pullParts, pullOne, nil)
		printRatio(pushParts, skPush, nil)
		printRatio(pullParts, skPull, nil)
		return
	}
	interleave(all...)
	printSeries(all...)
	printRatio(pushOne, skPush, nil)
	printRatio(pullOne, skPull, nil)
}
