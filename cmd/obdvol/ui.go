package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// jsonVersion is the version field of every JSON object obdvol prints.
const jsonVersion = 1

// printJSON writes v with the version field added.
func printJSON(w io.Writer, v map[string]any) error {
	v["version"] = jsonVersion
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parseSize reads 512, 64K, 64M, 10G, 1T, 2P, 1E (1024-based; "KiB",
// "KB" and "B" suffixes accepted): every unit formatSize prints.
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := uint64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		case 'E':
			mult = 1 << 60
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || t == "" {
		return 0, usagef("invalid size %q (want e.g. 512, 64M, 10G, 1T)", s)
	}
	if v > (1<<64-1)/mult {
		return 0, usagef("size %q is too large", s)
	}
	return v * mult, nil
}

// formatSize prints bytes with a 1024-based unit.
func formatSize(n uint64) string {
	units := []string{"B", "K", "M", "G", "T", "P", "E"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%dB", n)
	}
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d%s", int64(f), units[i])
	}
	return fmt.Sprintf("%.1f%s", f, units[i])
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

// progress prints a byte counter on stderr while a long operation runs.
// It is silent with --no-progress, --json, or when stderr is not a
// terminal.
type progress struct {
	label string
	total uint64
	done  atomic.Uint64
	stop  chan struct{}
	ended chan struct{}
	start time.Time
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func startProgress(opts *globalOptions, label string, total uint64) *progress {
	p := &progress{label: label, total: total, start: time.Now()}
	if opts.NoProgress || opts.JSON || !isTerminal(os.Stderr) {
		return p
	}
	p.stop, p.ended = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.ended)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				p.print()
				fmt.Fprintln(os.Stderr)
				return
			case <-t.C:
				p.print()
			}
		}
	}()
	return p
}

func (p *progress) print() {
	d := p.done.Load()
	pct := 100.0
	if p.total > 0 {
		pct = float64(d) * 100 / float64(p.total)
	}
	rate := float64(d) / max(time.Since(p.start).Seconds(), 1e-3)
	fmt.Fprintf(os.Stderr, "\r%s %s / %s (%.0f%%) %s/s   ", p.label, formatSize(d), formatSize(p.total), pct, formatSize(uint64(rate)))
}

func (p *progress) add(n uint64) { p.done.Add(n) }

func (p *progress) finish() {
	if p.stop != nil {
		close(p.stop)
		<-p.ended
		p.stop = nil
	}
}
