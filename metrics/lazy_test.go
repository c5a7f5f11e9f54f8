package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"testing"
	"time"

	"github.com/obdvol/obdvol/metrics"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/tests/regtest"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote/credentials"
)

// pushBlob pushes data as a blob to a real registry and returns a range
// fetcher for it and its digest.
func pushBlob(t *testing.T, reg *regtest.Registry, data []byte) (repo.RegistryRanges, string) {
	t.Helper()
	ref, err := repo.ParseRef(reg.Addr + "/metrics:v1")
	if err != nil {
		t.Fatal(err)
	}
	tg, err := repo.OpenTarget(ref, repo.TargetOptions{PlainHTTP: true, Credentials: credentials.NewMemoryStore()})
	if err != nil {
		t.Fatal(err)
	}
	d := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := tg.Repo.Push(context.Background(), d, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return repo.RegistryRanges{Repo: tg.Repo}, d.Digest.String()
}

// A lazy read from a real registry (docker-registry on loopback) counts
// its range requests and bytes under the registry's host; a registry that
// is gone counts errors.
func TestScrapeLazyFetches(t *testing.T) {
	reg := regtest.Start(t)
	data := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(data)
	rr, dg := pushBlob(t, reg, data)
	other := append([]byte("another blob"), data[:1000]...)
	rr2, dg2 := pushBlob(t, reg, other)

	c := metrics.New()
	prev := repo.SetFetchObserver(c)
	t.Cleanup(func() { repo.SetFetchObserver(prev) })
	st, err := repo.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts := repo.LazyOptions{Page: 64 << 10, RetryFor: 300 * time.Millisecond}
	b, err := st.OpenLazy(dg, int64(len(data)), rr, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := make([]byte, len(data))
	if _, err := b.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("lazy read of the blob: %v (equal %v)", err, bytes.Equal(got, data))
	}

	srv := serve(t, c)
	l := map[string]string{"registry": reg.Addr}
	mfs := scrape(t, srv.Addr())
	reqs := value(mfs, "obdvol_lazy_range_requests_total", l)
	if reqs < 1 || reqs > float64(len(data)/(64<<10)) {
		t.Fatalf("range requests %v for a 1 MiB blob in 64 KiB pages", reqs)
	}
	if got := value(mfs, "obdvol_lazy_fetched_bytes_total", l); got != float64(len(data)) {
		t.Fatalf("fetched bytes %v, want %d", got, len(data))
	}
	if got := value(mfs, "obdvol_lazy_range_errors_total", l); got != -1 {
		t.Fatalf("range errors %v, want none", got)
	}

	reg.Stop()
	b2, err := st.OpenLazy(dg2, int64(len(other)), rr2, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if _, err := b2.ReadAt(make([]byte, 10), 0); !errors.Is(err, repo.ErrUnavailable) {
		t.Fatalf("lazy read from a stopped registry: %v", err)
	}
	mfs = scrape(t, srv.Addr())
	errs := value(mfs, "obdvol_lazy_range_errors_total", l)
	if errs < 1 {
		t.Fatalf("range errors %v after a read from a stopped registry", errs)
	}
	if got := value(mfs, "obdvol_lazy_range_requests_total", l); got != reqs+errs {
		t.Fatalf("range requests %v, want %v before plus %v failed", got, reqs, errs)
	}
	if got := value(mfs, "obdvol_lazy_fetched_bytes_total", l); got != float64(len(data)) {
		t.Fatalf("fetched bytes %v after failures, want %d", got, len(data))
	}
}

// A registry with mirrors counts, per host asked, what each answered: a
// dead mirror an error, a cold pull-through mirror (it answers a missed
// range with the whole blob) a miss, the registry ok.
func TestScrapeMirrorHosts(t *testing.T) {
	reg := regtest.Start(t)
	mirror := regtest.StartMirror(t, reg.Addr)
	data := make([]byte, 256<<10)
	rand.New(rand.NewSource(2)).Read(data)
	_, dg := pushBlob(t, reg, data)
	dead := "127.0.0.1:1"
	ref, err := repo.ParseRef(reg.Addr + "/metrics:v1")
	if err != nil {
		t.Fatal(err)
	}
	tg, err := repo.OpenTarget(ref, repo.TargetOptions{PlainHTTP: true, Credentials: credentials.NewMemoryStore(),
		Mirrors: []string{"http://" + dead, "http://" + mirror.Addr}, HostsDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	c := metrics.New()
	prev := repo.SetFetchObserver(c)
	t.Cleanup(func() { repo.SetFetchObserver(prev) })
	st, err := repo.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.OpenLazy(dg, int64(len(data)), repo.RegistryRanges{Repo: tg.Repo}, repo.LazyOptions{Page: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := make([]byte, 64<<10)
	if _, err := b.ReadAt(got, 0); err != nil || !bytes.Equal(got, data[:64<<10]) {
		t.Fatalf("read: %v", err)
	}
	mfs := scrape(t, serve(t, c).Addr())
	name := "obdvol_registry_host_requests_total"
	for _, w := range []struct{ host, result string }{{dead, "error"}, {mirror.Addr, "miss"}, {reg.Addr, "ok"}} {
		if v := value(mfs, name, map[string]string{"registry": reg.Addr, "host": w.host, "result": w.result}); v != 1 {
			t.Errorf("%s{host=%s,result=%s} = %v, want 1", name, w.host, w.result, v)
		}
	}
}
