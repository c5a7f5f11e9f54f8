package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Every comparison in this bench runs its configurations in interleaved
// rounds: each round measures every configuration once, and the round's
// first configuration rotates (A B, B A, A B, ... for two), so a slow
// spell of this shared machine, and any order effect such as one side
// warming the page cache for the next, lands on every side alike rather
// than on one. A ratio is taken round by round (both sides measured
// moments apart) and reported as the median over the rounds with its
// min-max; each side is reported the same way in its own unit.

var rounds = flag.Int("rounds", envInt("BENCH_ROUNDS", 5), "interleaved rounds per comparison (default from $BENCH_ROUNDS, else 5)")

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// envSize is envInt where 0 is a value (a part to skip).
func envSize(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n >= 0 {
		return n
	}
	return def
}

// series is one configuration of a comparison: how to measure it once,
// and what it measured, one value per round.
type series struct {
	name string
	unit string
	run  func() float64
	v    []float64
}

func measure(name, unit string, run func() float64) *series {
	return &series{name: name, unit: unit, run: run}
}

// measure2 makes two series that one run fills (say the wall-clock and
// the CPU-time figure of the same reads): pass the first to interleave;
// the second takes its value from the same run.
func measure2(nameA, unitA, nameB, unitB string, run func() (float64, float64)) (*series, *series) {
	b := &series{name: nameB, unit: unitB}
	a := measure(nameA, unitA, func() float64 {
		x, y := run()
		b.v = append(b.v, y)
		return x
	})
	return a, b
}

// cpuTime is the CPU time this process has used, all threads.
func cpuTime() time.Duration {
	var ts unix.Timespec
	check(unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts))
	return time.Duration(ts.Nano())
}

// interleave runs every series once a round for *rounds rounds, the
// first series of a round rotating from round to round. A GC before each
// measurement keeps one side's garbage off the other's clock.
func interleave(ss ...*series) {
	for r := 0; r < max(*rounds, 1); r++ {
		for i := range ss {
			s := ss[(r+i)%len(ss)]
			runtime.GC()
			s.v = append(s.v, s.run())
		}
	}
}

// spread is the median and range of a set of measurements.
type spread struct{ med, min, max float64 }

func spreadOf(v []float64) spread {
	if len(v) == 0 {
		return spread{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{med, s[0], s[len(s)-1]}
}

func (p spread) String() string {
	return fmt.Sprintf("%s [%s-%s]", num(p.med), num(p.min), num(p.max))
}

func (s *series) spread() spread { return spreadOf(s.v) }

// num prints a measurement with about three significant digits.
func num(x float64) string {
	switch {
	case x >= 100 || x <= -100:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case x >= 10 || x <= -10:
		return strconv.FormatFloat(x, 'f', 1, 64)
	case x >= 1 || x <= -1:
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strconv.FormatFloat(x, 'g', 3, 64)
}

// ratio divides a by b round by round.
func ratio(a, b *series) spread {
	r := make([]float64, min(len(a.v), len(b.v)))
	for i := range r {
		r[i] = a.v[i] / b.v[i]
	}
	return spreadOf(r)
}

// goal is a target from the issue or the docs: at least or at most v.
type goal struct {
	atMost bool
	v      float64
}

func atLeast(v float64) *goal { return &goal{v: v} }
func atMost(v float64) *goal  { return &goal{atMost: true, v: v} }

// verdict prints the target and whether x meets it; a nil goal prints
// nothing. A MISS is reported, never fatal: this machine is noisy.
func (g *goal) verdict(x float64) string {
	if g == nil {
		return ""
	}
	op, ok := ">=", x >= g.v
	if g.atMost {
		op, ok = "<=", x <= g.v
	}
	res := "PASS"
	if !ok {
		res = "MISS"
	}
	return fmt.Sprintf("  target %s %s: %s", op, strconv.FormatFloat(g.v, 'g', -1, 64), res)
}

// roundsNote says how the figures that follow were taken.
func roundsNote() string {
	return fmt.Sprintf("median [min-max] of %d interleaved rounds", max(*rounds, 1))
}

// printSeries prints each series' median and range in its unit.
func printSeries(ss ...*series) {
	w := 0
	for _, s := range ss {
		w = max(w, len(s.name))
	}
	for _, s := range ss {
		fmt.Printf("  %-*s %s %s\n", w, s.name, s.spread(), s.unit)
	}
}

// printValue prints one series against a target of its own (a time to
// first read, not a ratio).
func printValue(s *series, g *goal) {
	fmt.Printf("  %s: %s %s%s\n", s.name, s.spread(), s.unit, g.verdict(s.spread().med))
}

// printRatio prints a/b round by round: the median ratio with its range,
// the target, and each side's median in its own unit.
func printRatio(a, b *series, g *goal) {
	r := ratio(a, b)
	fmt.Printf("  %s / %s: %s%s  (medians %s %s vs %s %s)\n", a.name, b.name, r, g.verdict(r.med),
		num(a.spread().med), a.unit, num(b.spread().med), b.unit)
}
