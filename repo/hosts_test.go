package repo

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const sampleHosts = `
server = "https://registry.example.com"

[host."http://127.0.0.1:65001"]
  capabilities = ["pull", "resolve"]
  [host."http://127.0.0.1:65001".header]
    X-Dragonfly-Registry = ["https://registry.example.com"]

[host."https://mirror.example.com/cache"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "mirror-ca.pem"

[host."https://harbor.example.com/v2/proxy-project"]
  override_path = true

[host."https://registry.example.com"]
  capabilities = ["pull", "resolve", "push"]
`

func TestParseHostsTOML(t *testing.T) {
	cfg, err := ParseHostsTOML([]byte(sampleHosts), "/etc/obdvol/certs.d/registry.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server == nil || cfg.Server.URL.String() != "https://registry.example.com/v2" || cfg.Server.Capabilities != CapPull|CapResolve|CapPush {
		t.Fatalf("server: %+v", cfg.Server)
	}
	var got []string
	for _, h := range cfg.Hosts {
		got = append(got, h.URL.String())
	}
	want := []string{"http://127.0.0.1:65001/v2", "https://mirror.example.com/cache/v2", "https://harbor.example.com/v2/proxy-project"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("hosts in order: %q, want %q (the server's own entry dropped)", got, want)
	}
	df := cfg.Hosts[0]
	if df.Capabilities != CapPull|CapResolve || df.Header.Get("X-Dragonfly-Registry") != "https://registry.example.com" {
		t.Fatalf("dfdaemon host: %+v", df)
	}
	m := cfg.Hosts[1]
	if m.Capabilities != CapPull || !m.SkipVerify || !reflect.DeepEqual(m.CAs, []string{"/etc/obdvol/certs.d/registry.example.com/mirror-ca.pem"}) {
		t.Fatalf("mirror: %+v", m)
	}
	if h := cfg.Hosts[2]; h.Capabilities != CapPull|CapResolve {
		t.Fatalf("default capabilities: %v", h.Capabilities)
	}
}

// client takes containerd's forms: a path (certificate and key in one
// file), or a list of paths and [certificate, key] pairs, relative paths
// under the file's directory.
func TestParseHostsTOMLClient(t *testing.T) {
	doc := `[host."https://a"]` + "\nclient = \"both.pem\"\n" +
		`[host."https://b"]` + "\nclient = [\"/x/one.pem\", [\"c.cert\", \"/k/c.key\"]]\n"
	cfg, err := ParseHostsTOML([]byte(doc), "/d")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Hosts[0].Clients; !reflect.DeepEqual(got, []ClientCert{{Cert: "/d/both.pem"}}) {
		t.Fatalf("a: %+v", got)
	}
	want := []ClientCert{{Cert: "/x/one.pem"}, {Cert: "/d/c.cert", Key: "/k/c.key"}}
	if got := cfg.Hosts[1].Clients; !reflect.DeepEqual(got, want) {
		t.Fatalf("b: %+v", got)
	}
}

func TestParseHostsTOMLRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown key":        `[host."https://m"]` + "\nmirror_of = 1\n",
		"unknown capability": `[host."https://m"]` + "\ncapabilities = [\"fly\"]\n",
		"client type":        `[host."https://m"]` + "\nclient = 3\n",
		"client pair":        `[host."https://m"]` + "\nclient = [[\"a.cert\"]]\n",
		"client empty":       `[host."https://m"]` + "\nclient = \"\"\n",
		"bad scheme":         `[host."ftp://m"]` + "\n",
		"credentials":        `[host."https://u:p@m"]` + "\n",
		"query":              `[host."https://m/?x=1"]` + "\n",
		"header newline":     `[host."https://m".header]` + "\nX-A = \"a\\nb\"\n",
		"header name":        `[host."https://m".header]` + "\n\"X A\" = \"b\"\n",
		"ca type":            `[host."https://m"]` + "\nca = 3\n",
		"server settings":    "skip_verify = true\n",
		"not toml":           "[host\n",
		"host not a table":   "host = 3\n",
	} {
		if _, err := ParseHostsTOML([]byte(doc), ""); err == nil {
			t.Errorf("%s: accepted %q", name, doc)
		}
	}
}

func TestParseEndpointURL(t *testing.T) {
	for in, want := range map[string]string{
		"mirror.local:5000":               "https://mirror.local:5000/v2",
		"http://127.0.0.1:5000":           "http://127.0.0.1:5000/v2",
		"http://127.0.0.1:5000/":          "http://127.0.0.1:5000/v2",
		"https://Mirror.Local/v2":         "https://mirror.local/v2",
		"https://m/cache":                 "https://m/cache/v2",
		"https://m/a/../cache/v2/":        "https://m/cache/v2",
		"http://[::1]:5000/registry-mirr": "http://[::1]:5000/registry-mirr/v2",
	} {
		u, err := ParseEndpointURL(in, false)
		if err != nil || u.String() != want {
			t.Errorf("%q: %v %v, want %s", in, u, err, want)
		}
	}
	for _, bad := range []string{"", "http://", "http://:80", "https://m:0", "https://m:99999", "https://m:x", "file:///x", "https://m/#f"} {
		if u, err := ParseEndpointURL(bad, false); err == nil {
			t.Errorf("%q accepted as %v", bad, u)
		}
	}
	if _, err := ParseEndpointURL("https://m", true); err == nil {
		t.Error("override_path without a path accepted")
	}
	if u, err := ParseEndpointURL("https://m/api/x", true); err != nil || u.Path != "/api/x" {
		t.Errorf("override_path: %v %v", u, err)
	}
}

func TestParseMirrorList(t *testing.T) {
	got, err := ParseMirrorList(" http://a:5000 ,, https://b/cache,")
	if err != nil || !reflect.DeepEqual(got, []string{"http://a:5000", "https://b/cache"}) {
		t.Fatalf("%q %v", got, err)
	}
	if _, err := ParseMirrorList("http://a, ftp://b"); err == nil {
		t.Fatal("bad mirror accepted")
	}
}

func TestLoadHostsDir(t *testing.T) {
	dir := t.TempDir()
	if cfg, err := LoadHosts(dir, "r.example:5000"); cfg != nil || err != nil {
		t.Fatalf("no file: %v %v", cfg, err)
	}
	write := func(name, doc string) {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "hosts.toml"), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("_default", `[host."http://fallback:1"]`+"\n")
	write("r.example:5000", `[host."http://specific:1"]`+"\n")
	for host, want := range map[string]string{"r.example:5000": "specific:1", "other": "fallback:1"} {
		cfg, err := LoadHosts(dir, host)
		if err != nil || len(cfg.Hosts) != 1 || cfg.Hosts[0].URL.Host != want {
			t.Fatalf("%s: %+v %v", host, cfg, err)
		}
	}
	for _, bad := range []string{"../x", "a/b", "..", ""} {
		if cfg, err := LoadHosts(dir, bad); cfg != nil || err != nil {
			t.Fatalf("%q: %v %v", bad, cfg, err)
		}
	}
	write("broken", "[host\n")
	if _, err := LoadHosts(dir, "broken"); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "broken", "hosts.toml")) {
		t.Fatalf("broken file: %v (want its path named)", err)
	}
}

// resolveMirrors: flag/env mirrors first, then the hosts.toml hosts; the
// origin itself is never a mirror.
func TestResolveMirrors(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "r:5000"), 0o755)
	os.WriteFile(filepath.Join(dir, "r:5000", "hosts.toml"), []byte(`
[host."http://toml-mirror:1"]
[host."http://r:5000"]
`), 0o644)
	t.Setenv(EnvMirrors, "http://env-mirror:1")
	cfg, err := resolveMirrors("r:5000", TargetOptions{HostsDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range cfg.mirrors {
		got = append(got, m.URL.Host)
	}
	if !reflect.DeepEqual(got, []string{"env-mirror:1", "toml-mirror:1"}) {
		t.Fatalf("mirrors %q", got)
	}
	cfg, _ = resolveMirrors("r:5000", TargetOptions{HostsDir: dir, Mirrors: []string{"http://flag:1"}})
	if len(cfg.mirrors) != 2 || cfg.mirrors[0].URL.Host != "flag:1" {
		t.Fatalf("--mirror replaces %s: %+v", EnvMirrors, cfg.mirrors)
	}
	if cfg, err := resolveMirrors("other", TargetOptions{HostsDir: dir, Mirrors: []string{}}); cfg != nil || err != nil {
		t.Fatalf("no mirror configured: %+v %v", cfg, err)
	}
	t.Setenv(EnvMirrors, "ftp://x")
	if _, err := resolveMirrors("r:5000", TargetOptions{HostsDir: dir}); err == nil || !strings.Contains(err.Error(), EnvMirrors) {
		t.Fatalf("bad %s: %v", EnvMirrors, err)
	}
}

func TestClassify(t *testing.T) {
	dg := "sha256:" + strings.Repeat("ab", 32)
	for _, c := range []struct {
		method, path string
		want         reqKind
	}{
		{"GET", "/v2/a/b/blobs/" + dg, kindPull},
		{"HEAD", "/v2/a/blobs/" + dg, kindOrigin},   // a push's existence check
		{"HEAD", "/v2/a/manifests/" + dg, kindPull}, // resolving a digest reference
		{"HEAD", "/v2/a/manifests/v1", kindResolve},
		{"GET", "/v2/a/manifests/" + dg, kindPull},
		{"GET", "/v2/a/manifests/v1", kindResolve},
		{"PUT", "/v2/a/manifests/v1", kindOrigin},
		{"POST", "/v2/a/blobs/uploads/", kindOrigin},
		{"GET", "/v2/a/blobs/uploads/x", kindOrigin},
		{"GET", "/v2/", kindOrigin},
		{"GET", "/v2/a/tags/list", kindOrigin},
		{"GET", "/v2/a/referrers/" + dg, kindOrigin},
	} {
		req, _ := http.NewRequest(c.method, "http://r"+c.path, nil)
		if got, _ := classify(req); got != c.want {
			t.Errorf("%s %s: %v, want %v", c.method, c.path, got, c.want)
		}
	}
}

func TestRangeMatches(t *testing.T) {
	for _, c := range []struct {
		rng, cr string
		length  int64
		n       int64
		ok      bool
	}{
		{"bytes=0-9", "bytes 0-9/100", 10, 10, true},
		{"bytes=0-9", "bytes 0-9/*", -1, 10, true},
		{"bytes=90-199", "bytes 90-99/100", 10, 10, true}, // past the end: clipped
		{"bytes=10-", "bytes 10-99/100", 90, 90, true},
		{"bytes=10-", "bytes 10-49/100", -1, 0, false},
		{"bytes=0-9", "bytes 1-10/100", 10, 0, false},
		{"bytes=0-9", "bytes 0-8/100", 9, 0, false},
		{"bytes=0-9", "bytes 0-9/100", 11, 0, false},
		{"bytes=0-9", "", -1, 0, false},
		{"bytes=0-9,20-29", "bytes 0-9/100", 10, 0, false},
		{"items=0-9", "bytes 0-9/100", 10, 0, false},
	} {
		n, ok := rangeMatches(c.rng, c.cr, c.length)
		if ok != c.ok || ok && n != c.n {
			t.Errorf("%q / %q / %d: %d %v", c.rng, c.cr, c.length, n, ok)
		}
	}
}

func FuzzParseHostsTOML(f *testing.F) {
	f.Add([]byte(sampleHosts))
	f.Add([]byte(`host."http://a".capabilities = ["pull"]`))
	f.Add([]byte("[[host]]\n"))
	f.Add([]byte(`[host."https://m".header]` + "\nX = [\"a\", 1]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseHostsTOML(b, "/d")
		if err != nil {
			return
		}
		for _, h := range append(cfg.Hosts, derefEndpoint(cfg.Server)...) {
			if h.URL.Host == "" || (h.URL.Scheme != "http" && h.URL.Scheme != "https") || h.URL.RawQuery != "" || h.URL.User != nil {
				t.Fatalf("bad endpoint %+v", h)
			}
			for k, vs := range h.Header {
				for _, v := range vs {
					if strings.ContainsAny(k+v, "\r\n\x00") {
						t.Fatalf("header %q: %q", k, v)
					}
				}
			}
		}
	})
}

func derefEndpoint(e *Endpoint) []Endpoint {
	if e == nil {
		return nil
	}
	return []Endpoint{*e}
}

func FuzzParseEndpointURL(f *testing.F) {
	for _, s := range []string{"m:5000", "http://127.0.0.1:5000/x", "https://[::1]/v2", "http://a@b", "https://m/%2e%2e/v2"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, override bool) {
		u, err := ParseEndpointURL(s, override)
		if err != nil {
			return
		}
		if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || !strings.HasPrefix(u.Path, "/") {
			t.Fatalf("%q -> %#v", s, u)
		}
		// What a mirror request is built from parses back to the same host.
		v, err := url.Parse(u.String() + "/r/blobs/x?ns=r")
		if err != nil || v.Host != u.Host {
			t.Fatalf("%q -> %s does not round-trip: %v", s, u, err)
		}
	})
}

func FuzzRangeMatches(f *testing.F) {
	f.Add("bytes=0-9", "bytes 0-9/100", int64(10))
	f.Add("bytes=10-", "bytes 10-99/*", int64(-1))
	f.Fuzz(func(t *testing.T, rng, cr string, length int64) {
		n, ok := rangeMatches(rng, cr, length)
		if ok && (n <= 0 || length >= 0 && n != length) {
			t.Fatalf("%q %q %d: %d", rng, cr, length, n)
		}
	})
}

func FuzzParseMirrorList(f *testing.F) {
	f.Add("http://a:5000, https://b/cache")
	f.Add(",,")
	f.Fuzz(func(t *testing.T, s string) {
		list, err := ParseMirrorList(s)
		if err != nil {
			return
		}
		for _, m := range list {
			if m == "" || strings.Contains(m, ",") {
				t.Fatalf("%q -> %q", s, list)
			}
			if _, err := ParseEndpointURL(m, false); err != nil {
				t.Fatalf("%q: listed %q does not parse: %v", s, m, err)
			}
		}
	})
}
