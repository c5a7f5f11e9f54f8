package metrics

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/obdvol/obdvol/snapshot"
	dto "github.com/prometheus/client_model/go"
)

// Collector holds the metrics of one obdvol process on its own registry.
// All methods are safe for concurrent use. It is a prometheus.Gatherer
// (Serve takes it), a repo.FetchObserver (RangeRequest) and a
// repo.HostObserver (HostRequest); ObserveSeal
// fits volume.Options.OnSeal.
type Collector struct {
	reg *prometheus.Registry

	ops, bytes, errs *prometheus.CounterVec   // {volume, op}
	latency          *prometheus.HistogramVec // {volume, op}

	rangeReqs, rangeBytes, rangeErrs *prometheus.CounterVec // {registry}

	hostReqs *prometheus.CounterVec // {registry, host, result}: who answered (mirrors)

	sealDur  *prometheus.HistogramVec // {volume}
	sealFail *prometheus.CounterVec   // {volume}

	cache atomic.Pointer[chunkCacheBox]
}

// ChunkCache is the decompressed-chunk cache as metrics reads it, at each
// scrape; *snapshot.Cache implements it.
type ChunkCache interface {
	Stats() snapshot.CacheStats
}

type chunkCacheBox struct{ c ChunkCache }

// Op names, the values of the op label.
const (
	OpRead        = "read"
	OpWrite       = "write"
	OpFlush       = "flush"
	OpDiscard     = "discard"
	OpWriteZeroes = "write_zeroes"
)

var opNames = [...]string{opRead: OpRead, opWrite: OpWrite, opFlush: OpFlush, opDiscard: OpDiscard, opWriteZeroes: OpWriteZeroes}

const (
	opRead = iota
	opWrite
	opFlush
	opDiscard
	opWriteZeroes
	nOps
)

// ioBuckets are the latency buckets of a block request: 10 µs to 2.6 s.
var ioBuckets = prometheus.ExponentialBuckets(10e-6, 4, 10)

// sealBuckets are the seal-duration buckets: 10 ms to 44 minutes.
var sealBuckets = prometheus.ExponentialBuckets(0.01, 4, 10)

// New returns a collector with every obdvol metric, plus the Go runtime's
// and the process's (go_*, process_*: memory, CPU, open files), registered
// on a fresh registry.
func New() *Collector {
	vl := []string{"volume", "op"}
	c := &Collector{
		reg: prometheus.NewRegistry(),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "obdvol_volume_ops_total",
			Help: "Block requests served per volume and op (read, write, flush, discard, write_zeroes), failed ones included."}, vl),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "obdvol_volume_bytes_total",
			Help: "Bytes per volume and op: read and written (as returned), discarded and zeroed (ranges of successful requests)."}, vl),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "obdvol_volume_errors_total",
			Help: "Block requests that returned an error, per volume and op."}, vl),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "obdvol_volume_op_duration_seconds",
			Help: "Time the volume took to serve a block request, per volume and op.", Buckets: ioBuckets}, vl),
		rangeReqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "obdvol_lazy_range_requests_total",
			Help: "HTTP range requests sent to a registry for lazily pulled blobs, per registry host."}, []string{"registry"}),
		rangeBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "obdvol_lazy_fetched_bytes_total",
			Help: "Blob bytes received by successful range requests, per registry host."}, []string{"registry"}),
		rangeErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "obdvol_lazy_range_errors_total",
			Help: "Range requests that failed (network, HTTP status, wrong range), per registry host; retries count again."}, []string{"registry"}),
		hostReqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "obdvol_registry_host_requests_total",
			Help: "Pull requests (blobs, manifests) of a registry that has mirrors, per registry, host that was asked (a mirror or the registry) and result (ok, miss: not served, the next host is asked; error: connection error or 5xx)."},
			[]string{"registry", "host", "result"}),
		sealDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "obdvol_seal_duration_seconds",
			Help: "Duration of successful snapshots (freeze, seal of the writable layer, commit), per volume.", Buckets: sealBuckets}, []string{"volume"}),
		sealFail: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "obdvol_seal_failures_total",
			Help: "Snapshots that failed after their checks passed, per volume."}, []string{"volume"}),
	}
	c.reg.MustRegister(c.ops, c.bytes, c.errs, c.latency, c.rangeReqs, c.rangeBytes, c.rangeErrs, c.hostReqs,
		c.sealDur, c.sealFail, cacheCollector{c},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return c
}

// Registry returns the collector's registry, to register more metrics.
func (c *Collector) Registry() *prometheus.Registry { return c.reg }

// Gather implements prometheus.Gatherer.
func (c *Collector) Gather() ([]*dto.MetricFamily, error) { return c.reg.Gather() }

// WatchCache makes the collector report cache (nil: none) at each scrape.
func (c *Collector) WatchCache(cache ChunkCache) {
	if cache == nil {
		c.cache.Store(nil)
		return
	}
	c.cache.Store(&chunkCacheBox{cache})
}

// RangeRequest implements repo.FetchObserver: one range request to
// registry (a host) that delivered n bytes and failed with err (or nil).
func (c *Collector) RangeRequest(registry string, n int64, err error) {
	registry = label(registry)
	c.rangeReqs.WithLabelValues(registry).Inc()
	if n > 0 {
		c.rangeBytes.WithLabelValues(registry).Add(float64(n))
	}
	if err != nil {
		c.rangeErrs.WithLabelValues(registry).Inc()
	}
}

// HostRequest implements repo.HostObserver: one pull request of registry
// that host (a mirror, or the registry itself) answered with status (0 and
// err on a connection error).
func (c *Collector) HostRequest(registry, host string, status int, err error) {
	result := "miss"
	switch {
	case status == 0 || status >= 500:
		result = "error"
	case err == nil && (status == 200 || status == 206):
		result = "ok"
	}
	c.hostReqs.WithLabelValues(label(registry), label(host), result).Inc()
}

// ObserveSeal records one snapshot of vol: its duration when it
// succeeded, a failure otherwise. It fits volume.Options.OnSeal.
func (c *Collector) ObserveSeal(vol string, d time.Duration, err error) {
	vol = label(vol)
	if err != nil {
		c.sealFail.WithLabelValues(vol).Inc()
		return
	}
	c.sealDur.WithLabelValues(vol).Observe(d.Seconds())
}

// Forget deletes every series of vol (I/O and seals): call it when the
// volume is deactivated, after its device is gone. A backend Instrument
// returned for vol keeps working but its counts are no longer exported;
// instrumenting vol again starts its series from zero.
func (c *Collector) Forget(vol string) {
	l := prometheus.Labels{"volume": label(vol)}
	c.ops.DeletePartialMatch(l)
	c.bytes.DeletePartialMatch(l)
	c.errs.DeletePartialMatch(l)
	c.latency.DeletePartialMatch(l)
	c.sealDur.DeletePartialMatch(l)
	c.sealFail.DeletePartialMatch(l)
}

// label makes s a valid label value (prometheus panics on invalid UTF-8).
func label(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// cacheCollector reads the watched cache at each scrape.
type cacheCollector struct{ c *Collector }

var (
	cacheHitsDesc = prometheus.NewDesc("obdvol_chunk_cache_hits_total",
		"Reads of a chunk found decompressed in the shared chunk cache.", nil, nil)
	cacheMissesDesc = prometheus.NewDesc("obdvol_chunk_cache_misses_total",
		"Reads of a chunk not in the shared chunk cache (read from its layer and decompressed).", nil, nil)
	cacheBytesDesc = prometheus.NewDesc("obdvol_chunk_cache_bytes",
		"Decompressed bytes the shared chunk cache holds now.", nil, nil)
	cacheDecompDesc = prometheus.NewDesc("obdvol_chunk_cache_decompressions_total",
		"Chunks read from their layer, verified and decompressed into the shared cache (once per chunk while it stays cached, whatever number of volumes read it).", nil, nil)
	cacheDecompBytesDesc = prometheus.NewDesc("obdvol_chunk_cache_decompressed_bytes_total",
		"Decompressed bytes of those chunks.", nil, nil)
	cacheEvictDesc = prometheus.NewDesc("obdvol_chunk_cache_evictions_total",
		"Chunks evicted from the shared cache to make room.", nil, nil)
)

func (cc cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- cacheHitsDesc
	ch <- cacheMissesDesc
	ch <- cacheBytesDesc
	ch <- cacheDecompDesc
	ch <- cacheDecompBytesDesc
	ch <- cacheEvictDesc
}

func (cc cacheCollector) Collect(ch chan<- prometheus.Metric) {
	box := cc.c.cache.Load()
	if box == nil {
		return
	}
	st := box.c.Stats()
	ch <- prometheus.MustNewConstMetric(cacheHitsDesc, prometheus.CounterValue, float64(st.Hits))
	ch <- prometheus.MustNewConstMetric(cacheMissesDesc, prometheus.CounterValue, float64(st.Misses))
	ch <- prometheus.MustNewConstMetric(cacheBytesDesc, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(cacheDecompDesc, prometheus.CounterValue, float64(st.ChunksDecompressed))
	ch <- prometheus.MustNewConstMetric(cacheDecompBytesDesc, prometheus.CounterValue, float64(st.BytesDecompressed))
	ch <- prometheus.MustNewConstMetric(cacheEvictDesc, prometheus.CounterValue, float64(st.Evictions))
}
