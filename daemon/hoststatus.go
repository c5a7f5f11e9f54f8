package daemon

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// HostStatus is what a status request naming no volume adds about the
// daemon itself: its memory, the shared chunk cache's counters and its
// metrics endpoint, so that scripts and tests read them without a
// Prometheus scraper.
type HostStatus struct {
	PID int `json:"pid"`
	// RSSBytes is the daemon's resident set size (VmRSS), 0 when unknown.
	RSSBytes uint64 `json:"rss_bytes"`
	// Active is the number of volumes the daemon serves.
	Active int        `json:"active"`
	Cache  CacheStats `json:"cache"`
	// MetricsAddr is where GET /metrics answers (host:port), "" when the
	// daemon runs without --metrics.
	MetricsAddr string `json:"metrics_addr,omitempty"`
}

// CacheStats are the shared decompressed-chunk cache's counters (see
// snapshot.CacheStats), since the daemon started.
type CacheStats struct {
	Hits               uint64 `json:"hits"`
	Misses             uint64 `json:"misses"`
	ChunksDecompressed uint64 `json:"chunks_decompressed"`
	BytesDecompressed  uint64 `json:"bytes_decompressed"`
	Evictions          uint64 `json:"evictions"`
	Bytes              uint64 `json:"bytes"` // held now
}

// HostStatus describes the daemon now.
func (h *Host) HostStatus() HostStatus {
	h.mu.Lock()
	s := HostStatus{PID: os.Getpid(), Active: len(h.vols), MetricsAddr: h.mAddr}
	h.mu.Unlock()
	s.RSSBytes = selfRSS()
	if c := h.cfg.Manager.Cache(); c != nil {
		st := c.Stats()
		s.Cache = CacheStats{Hits: st.Hits, Misses: st.Misses, ChunksDecompressed: st.ChunksDecompressed,
			BytesDecompressed: st.BytesDecompressed, Evictions: st.Evictions, Bytes: st.Bytes}
	}
	return s
}

// SetMetricsAddr records where the metrics endpoint listens, for status.
func (h *Host) SetMetricsAddr(addr string) {
	h.mu.Lock()
	h.mAddr = addr
	h.mu.Unlock()
}

// selfRSS is this process's VmRSS in bytes (0 when unreadable).
func selfRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fs := strings.Fields(rest)
			if len(fs) == 2 && fs[1] == "kB" {
				if n, err := strconv.ParseUint(fs[0], 10, 64); err == nil {
					return n << 10
				}
			}
			return 0
		}
	}
	return 0
}
