package metrics

import (
	"time"

	"github.com/obdvol/obdvol/device"
	"github.com/prometheus/client_golang/prometheus"
)

// Instrument returns b counted and timed as volume vol: every request
// adds to obdvol_volume_ops_total, _bytes_total, _errors_total and
// obdvol_volume_op_duration_seconds{volume=vol}, then returns what b
// returned. The result implements device.Mapper when b does (NBD's
// BLOCK_STATUS; Map is passed through, not counted). Serve the result in
// place of b; close b itself.
//
// Every series is resolved here, so a request takes no lock and allocates
// nothing. Instrumenting vol again (a reattach) continues its counts.
func (c *Collector) Instrument(vol string, b device.Backend) device.Backend {
	vol = label(vol)
	in := &instrumented{b: b}
	for i, op := range opNames {
		m := &in.op[i]
		m.ops = c.ops.WithLabelValues(vol, op)
		m.errs = c.errs.WithLabelValues(vol, op)
		m.lat = c.latency.WithLabelValues(vol, op)
		if i != opFlush {
			m.bytes = c.bytes.WithLabelValues(vol, op)
		}
	}
	if mp, ok := b.(device.Mapper); ok {
		return &instrumentedMapper{instrumented: in, m: mp}
	}
	return in
}

// opMetrics are the resolved series of one op of one volume.
type opMetrics struct {
	ops, errs prometheus.Counter
	bytes     prometheus.Counter // nil for flush
	lat       prometheus.Observer
}

// done records one request that started at t, moved n bytes and returned err.
func (m *opMetrics) done(t time.Time, n int64, err error) {
	m.lat.Observe(time.Since(t).Seconds())
	m.ops.Inc()
	if n > 0 {
		m.bytes.Add(float64(n))
	}
	if err != nil {
		m.errs.Inc()
	}
}

type instrumented struct {
	b  device.Backend
	op [nOps]opMetrics
}

func (in *instrumented) ReadAt(p []byte, off int64) (int, error) {
	t := time.Now()
	n, err := in.b.ReadAt(p, off)
	in.op[opRead].done(t, int64(n), err)
	return n, err
}

func (in *instrumented) WriteAt(p []byte, off int64) (int, error) {
	t := time.Now()
	n, err := in.b.WriteAt(p, off)
	in.op[opWrite].done(t, int64(n), err)
	return n, err
}

func (in *instrumented) Flush() error {
	t := time.Now()
	err := in.b.Flush()
	in.op[opFlush].done(t, 0, err)
	return err
}

func (in *instrumented) Discard(off, n int64) error {
	t := time.Now()
	err := in.b.Discard(off, n)
	in.op[opDiscard].done(t, okBytes(n, err), err)
	return err
}

func (in *instrumented) WriteZeroes(off, n int64) error {
	t := time.Now()
	err := in.b.WriteZeroes(off, n)
	in.op[opWriteZeroes].done(t, okBytes(n, err), err)
	return err
}

func (in *instrumented) Size() uint64 { return in.b.Size() }

// okBytes is n when err is nil: a failed discard or zeroing moved nothing.
func okBytes(n int64, err error) int64 {
	if err != nil {
		return 0
	}
	return n
}

// instrumentedMapper keeps device.Mapper of a backend that has it.
type instrumentedMapper struct {
	*instrumented
	m device.Mapper
}

func (im *instrumentedMapper) Map(off, n int64, fn func(length int64, hole, zero bool) bool) error {
	return im.m.Map(off, n, fn)
}
