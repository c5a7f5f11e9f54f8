package repo

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// DefaultHostsDir is where per-registry hosts.toml files are looked for
// when neither TargetOptions.HostsDir nor OBDVOL_HOSTS_DIR names a
// directory: <dir>/<host[:port]>/hosts.toml, else <dir>/_default/hosts.toml
// (containerd's layout, so one tree can serve both).
const DefaultHostsDir = "/etc/obdvol/certs.d"

// Environment variables read by OpenTarget when TargetOptions leaves the
// mirror configuration unset: every process (pull, fill, the daemon
// serving lazy volumes) reads the same.
const (
	EnvMirrors  = "OBDVOL_MIRRORS"   // comma-separated mirror URLs for every registry
	EnvHostsDir = "OBDVOL_HOSTS_DIR" // the hosts.toml directory
)

// Capability is what a host may be asked (containerd's host capabilities).
type Capability uint8

const (
	// CapPull: blobs and manifests by digest (content checked by digest).
	CapPull Capability = 1 << iota
	// CapResolve: tags (what a tag means is taken from this host).
	CapResolve
	// CapPush is parsed for compatibility; obdvol pushes only to the origin.
	CapPush
)

// Endpoint is one HTTP endpoint that serves a registry's content: a mirror
// or the registry itself.
type Endpoint struct {
	// URL holds the scheme, host and the API root path ("/v2", or a
	// prefix ending in /v2, or any path with OverridePath); no query.
	URL          url.URL
	Capabilities Capability
	SkipVerify   bool     // TLS certificate not checked (test setups only)
	CAs          []string // PEM files of extra CAs trusted for this host
	Clients      []ClientCert
	Header       http.Header // added to every request to this host
}

// ClientCert is a client certificate presented to a host that asks for
// one (mutual TLS): PEM files of the certificate and its key (Key "": the
// key is in Cert's file too).
type ClientCert struct {
	Cert, Key string
}

// Host is the endpoint's host[:port].
func (e *Endpoint) Host() string { return e.URL.Host }

// HostsConfig is one registry's hosts.toml: the registry's own endpoint
// (server) and the hosts to try first, in the file's order.
type HostsConfig struct {
	Server *Endpoint // nil: the registry named by the reference, as is
	Hosts  []Endpoint
}

// maxHostsFile bounds a hosts.toml file.
const maxHostsFile = 1 << 20

// hostsFile is the TOML layout (containerd's hosts.toml, the part obdvol
// uses).
type hostsFile struct {
	Server       string         `toml:"server"`
	hostFields                  // the server's own settings
	Host         map[string]any `toml:"host"`
	OverridePath bool           `toml:"override_path"`
}

type hostFields struct {
	Capabilities []string       `toml:"capabilities"`
	SkipVerify   *bool          `toml:"skip_verify"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	Header       map[string]any `toml:"header"`
}

type hostEntry struct {
	hostFields
	OverridePath bool `toml:"override_path"`
}

// ParseHostsTOML parses a hosts.toml (containerd's format): server,
// capabilities, skip_verify, ca (a path or a list, relative to dir when not
// absolute), header, override_path, and [host."URL"] tables with the same
// keys, kept in the file's order; client is a path (certificate and key in
// one PEM file), or a list of paths and [certificate, key] pairs, relative
// to dir when not absolute. A host without capabilities gets pull and resolve, as in
// containerd; a host entry for the server itself is dropped (the server is
// always tried last).
func ParseHostsTOML(data []byte, dir string) (*HostsConfig, error) {
	if len(data) > maxHostsFile {
		return nil, fmt.Errorf("hosts.toml: %d bytes, at most %d", len(data), maxHostsFile)
	}
	var f hostsFile
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("hosts.toml: %w", err)
	}
	order, err := hostOrder(data)
	if err != nil {
		return nil, fmt.Errorf("hosts.toml: %w", err)
	}
	cfg := &HostsConfig{}
	if f.Server != "" {
		ep, err := endpointOf(f.Server, hostEntry{hostFields: f.hostFields, OverridePath: f.OverridePath}, dir)
		if err != nil {
			return nil, fmt.Errorf("hosts.toml: server: %w", err)
		}
		ep.Capabilities = CapPull | CapResolve | CapPush
		cfg.Server = ep
	} else if f.Capabilities != nil || f.SkipVerify != nil || f.CA != nil || f.Client != nil || f.Header != nil || f.OverridePath {
		return nil, errors.New("hosts.toml: server settings without server")
	}
	if len(order) != len(f.Host) {
		return nil, fmt.Errorf("hosts.toml: %d host tables, %d named", len(f.Host), len(order))
	}
	for _, name := range order {
		raw, ok := f.Host[name]
		if !ok {
			return nil, fmt.Errorf("hosts.toml: host %q", name)
		}
		var he hostEntry
		if err := redecode(raw, &he); err != nil {
			return nil, fmt.Errorf("hosts.toml: host %q: %w", name, err)
		}
		ep, err := endpointOf(name, he, dir)
		if err != nil {
			return nil, fmt.Errorf("hosts.toml: host %q: %w", name, err)
		}
		if cfg.Server != nil && ep.URL.Host == cfg.Server.URL.Host && ep.URL.Scheme == cfg.Server.URL.Scheme {
			continue // the server: tried last anyway
		}
		cfg.Hosts = append(cfg.Hosts, *ep)
	}
	return cfg, nil
}

// redecode decodes a generic TOML table into a struct, strictly.
func redecode(raw any, v any) error {
	tbl, ok := raw.(map[string]any)
	if !ok {
		return errors.New("not a table")
	}
	b, err := toml.Marshal(tbl)
	if err != nil {
		return err
	}
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// hostOrder lists the names of the [host."..."] tables (or host."...".key
// keys) in the order they first appear.
func hostOrder(data []byte) ([]string, error) {
	var p unstable.Parser
	p.Reset(data)
	var order []string
	seen := map[string]bool{}
	add := func(it unstable.Iterator) {
		var parts []string
		for it.Next() {
			parts = append(parts, string(it.Node().Data))
			if len(parts) == 2 {
				break
			}
		}
		if len(parts) == 2 && parts[0] == "host" && !seen[parts[1]] {
			seen[parts[1]] = true
			order = append(order, parts[1])
		}
	}
	table := false // inside a table header's section
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = true
			add(e.Key())
		case unstable.KeyValue:
			if !table {
				add(e.Key())
			}
		}
	}
	return order, p.Error()
}

// clientCerts reads a client setting: a path, or a list of paths and
// [certificate, key] pairs (containerd's forms).
func clientCerts(v any, dir string) ([]ClientCert, error) {
	abs := func(p string) (string, error) {
		if p == "" {
			return "", errors.New("client: empty path")
		}
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		return p, nil
	}
	bad := errors.New("client: want a path, or a list of paths and [certificate, key] pairs")
	var out []ClientCert
	add := func(cert, key string) error {
		c, err := abs(cert)
		if err != nil {
			return err
		}
		var k string
		if key != "" {
			if k, err = abs(key); err != nil {
				return err
			}
		}
		out = append(out, ClientCert{Cert: c, Key: k})
		return nil
	}
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return out, add(v, "")
	case []any:
		for _, e := range v {
			switch e := e.(type) {
			case string:
				if err := add(e, ""); err != nil {
					return nil, err
				}
			case []any:
				if len(e) != 2 {
					return nil, bad
				}
				c, ok1 := e[0].(string)
				k, ok2 := e[1].(string)
				if !ok1 || !ok2 {
					return nil, bad
				}
				if err := add(c, k); err != nil {
					return nil, err
				}
			default:
				return nil, bad
			}
		}
		return out, nil
	}
	return nil, bad
}

// endpointOf builds an endpoint from a host URL and its settings.
func endpointOf(raw string, he hostEntry, dir string) (*Endpoint, error) {
	u, err := ParseEndpointURL(raw, he.OverridePath)
	if err != nil {
		return nil, err
	}
	ep := &Endpoint{URL: *u}
	if he.Capabilities == nil {
		ep.Capabilities = CapPull | CapResolve
	}
	for _, c := range he.Capabilities {
		switch c {
		case "pull":
			ep.Capabilities |= CapPull
		case "resolve":
			ep.Capabilities |= CapResolve
		case "push":
			ep.Capabilities |= CapPush
		default:
			return nil, fmt.Errorf("unknown capability %q", c)
		}
	}
	if he.SkipVerify != nil {
		ep.SkipVerify = *he.SkipVerify
	}
	switch ca := he.CA.(type) {
	case nil:
	case string:
		ep.CAs = []string{ca}
	case []any:
		for _, c := range ca {
			s, ok := c.(string)
			if !ok {
				return nil, errors.New("ca: want a path or a list of paths")
			}
			ep.CAs = append(ep.CAs, s)
		}
	default:
		return nil, errors.New("ca: want a path or a list of paths")
	}
	for i, c := range ep.CAs {
		if c == "" {
			return nil, errors.New("ca: empty path")
		}
		if !filepath.IsAbs(c) && dir != "" {
			ep.CAs[i] = filepath.Join(dir, c)
		}
	}
	if ep.Clients, err = clientCerts(he.Client, dir); err != nil {
		return nil, err
	}
	if len(he.Header) > 0 {
		ep.Header = http.Header{}
	}
	for k, v := range he.Header {
		if !validHeaderName(k) {
			return nil, fmt.Errorf("header %q: bad name", k)
		}
		var vals []string
		switch v := v.(type) {
		case string:
			vals = []string{v}
		case []any:
			for _, x := range v {
				s, ok := x.(string)
				if !ok {
					return nil, fmt.Errorf("header %q: want a string or a list of strings", k)
				}
				vals = append(vals, s)
			}
		default:
			return nil, fmt.Errorf("header %q: want a string or a list of strings", k)
		}
		for _, s := range vals {
			if strings.ContainsAny(s, "\r\n\x00") {
				return nil, fmt.Errorf("header %q: bad value", k)
			}
			ep.Header.Add(k, s)
		}
	}
	return ep, nil
}

func validHeaderName(k string) bool {
	if k == "" || len(k) > 256 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// ParseEndpointURL parses a mirror or server URL: [http[s]://]host[:port][/path].
// No scheme means https. The path is the API root as containerd reads it:
// empty means /v2, a path not ending in /v2 gets /v2 appended unless
// overridePath says the path is the API root itself. User info, queries
// and fragments are refused.
func ParseEndpointURL(raw string, overridePath bool) (*url.URL, error) {
	s := raw
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("url %q: %w", raw, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("url %q: scheme must be http or https", raw)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("url %q: no host", raw)
	case u.User != nil:
		return nil, fmt.Errorf("url %q: credentials do not belong in a URL (use obdvol login <host>)", redactRef(raw))
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "":
		return nil, fmt.Errorf("url %q: no query or fragment allowed", raw)
	case strings.ContainsAny(u.Host, " \t\r\n\x00"):
		return nil, fmt.Errorf("url %q: bad host", raw)
	}
	if p := u.Port(); p != "" {
		if n := atoiPort(p); n < 1 || n > 65535 {
			return nil, fmt.Errorf("url %q: bad port", raw)
		}
	}
	p := u.Path
	if p != "" {
		p = path.Clean("/" + p)
	}
	switch {
	case overridePath && (p == "" || p == "/"):
		return nil, fmt.Errorf("url %q: override_path needs a path", raw)
	case overridePath:
	case p == "" || p == "/":
		p = "/v2"
	case !strings.HasSuffix(p, "/v2"):
		p += "/v2"
	}
	return &url.URL{Scheme: u.Scheme, Host: strings.ToLower(u.Host), Path: p}, nil
}

func atoiPort(p string) int {
	if p == "" || len(p) > 5 {
		return -1
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return -1
		}
		n = n*10 + int(p[i]-'0')
	}
	return n
}

// ParseMirrorList parses a comma-separated list of mirror URLs
// (OBDVOL_MIRRORS); blanks are skipped.
func ParseMirrorList(s string) ([]string, error) {
	var out []string
	for _, m := range strings.Split(s, ",") {
		m = strings.TrimSpace(m)
		if m == "" {
			continue
		}
		if _, err := ParseEndpointURL(m, false); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// LoadHosts reads the hosts.toml of registry host (host[:port]) under
// dir: <dir>/<host>/hosts.toml, else <dir>/_default/hosts.toml. No file
// (or no dir) is no configuration (nil, nil).
func LoadHosts(dir, host string) (*HostsConfig, error) {
	if dir == "" || host == "" || strings.ContainsAny(host, "/\\\x00") || host == "." || host == ".." {
		return nil, nil
	}
	for _, name := range []string{host, "_default"} {
		hd := filepath.Join(dir, name)
		p := filepath.Join(hd, "hosts.toml")
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) && name == "_default" {
			continue
		}
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(io.LimitReader(f, maxHostsFile+1))
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		cfg, err := ParseHostsTOML(b, hd)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		return cfg, nil
	}
	return nil, nil
}
