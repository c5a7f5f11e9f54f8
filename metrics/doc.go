// Package metrics exports what a long-running obdvol process (the daemon)
// does, in the Prometheus text format: per-volume I/O, the shared chunk
// cache, lazy fetches from registries and seals. docs/metrics.md lists
// every metric.
//
// Glossary:
//   - collector: a Collector, the metrics of one process on its own
//     prometheus.Registry (never the global default registry, so tests
//     and embedders do not share state).
//   - series: one metric with one set of label values, e.g.
//     obdvol_volume_ops_total{volume="vm1",op="read"}.
//   - instrumented backend: a device.Backend wrapped by Instrument; it
//     counts every request and times it, then passes it on.
//
// Invariants:
//   - The I/O path takes no lock and allocates nothing: Instrument resolves
//     every series of a volume once, at wrap time; a request costs two
//     clock reads and a few atomic adds.
//   - Labels are bounded and reveal no secret: volume names (validated by
//     the catalogue), a fixed set of op names, registry hosts (host[:port]:
//     never a URL, a repository, a token or a credential).
//   - The endpoint listens on loopback only unless the caller allows more
//     (ServeOptions.AllowRemote): metrics name every volume on the host.
//
// Lifecycle (the daemon):
//
//	c := metrics.New()
//	repo.SetFetchObserver(c)                      // lazy fetches
//	m := volume.NewManager(root, cat, blobs, volume.Options{OnSeal: c.ObserveSeal})
//	c.WatchCache(m.Cache())                       // *snapshot.Cache
//	srv, err := metrics.Serve(ctx, "127.0.0.1:9863", c, metrics.ServeOptions{})
//	...
//	b := c.Instrument("vm1", vol)                 // serve b instead of vol
//	...                                           // device gone:
//	c.Forget("vm1")
//	srv.Close()
package metrics
