package repo

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content/oci"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"
)

// Ref names a snapshot artifact: host[:port]/repo:tag, host/repo@sha256:...,
// or oci:DIR[:tag] for an OCI image layout directory.
type Ref struct {
	Dir       string             // OCI layout directory (oci: refs)
	Remote    registry.Reference // registry refs
	Reference string             // tag or digest
}

// IsLayout reports whether r names an OCI layout directory.
func (r Ref) IsLayout() bool { return r.Dir != "" }

// String prints the reference in the form ParseRef reads. It never holds
// credentials: ParseRef refuses references that carry any.
func (r Ref) String() string {
	if r.IsLayout() {
		if strings.HasPrefix(r.Reference, "sha256:") {
			return "oci:" + r.Dir + "@" + r.Reference
		}
		return "oci:" + r.Dir + ":" + r.Reference
	}
	return r.Remote.String()
}

// Host is the registry host (empty for layouts).
func (r Ref) Host() string { return r.Remote.Registry }

// Repository is "host/repo" (or the layout dir), without tag or digest:
// what a layer's origin records.
func (r Ref) Repository() string {
	if r.IsLayout() {
		return "oci:" + r.Dir
	}
	return r.Remote.Registry + "/" + r.Remote.Repository
}

// ParseRef parses a reference: host[:port]/repo:tag,
// host[:port]/repo@sha256:<hex>, oci:DIR[:tag] or oci:DIR@sha256:<hex>.
// A registry reference needs a tag or digest ("latest" is not assumed:
// snapshots are named); a layout reference without one means tag
// "latest". A reference holding credentials (user:password@host/...) is
// refused, and error messages show it with the credentials masked.
func ParseRef(s string) (Ref, error) {
	shown := redactRef(s)
	if strings.Contains(s, "://") {
		return Ref{}, fmt.Errorf("reference %q: give host[:port]/repo:tag or oci:DIR without a scheme (use --plain-http for http)", shown)
	}
	if rest, ok := strings.CutPrefix(s, "oci:"); ok {
		return parseLayoutRef(s, rest)
	}
	if shown != s {
		return Ref{}, fmt.Errorf("reference %q: credentials do not belong in a reference (use obdvol login)", shown)
	}
	rr, err := registry.ParseReference(s)
	if err != nil {
		return Ref{}, fmt.Errorf("reference %q: %w (want host[:port]/repo:tag, host/repo@sha256:..., or oci:DIR[:tag])", s, err)
	}
	if rr.Reference == "" {
		return Ref{}, fmt.Errorf("reference %q has no tag or digest", s)
	}
	if _, port, ok := strings.Cut(rr.Registry, ":"); ok && !strings.HasPrefix(rr.Registry, "[") {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return Ref{}, fmt.Errorf("reference %q: bad port %q", s, port)
		}
	}
	return Ref{Remote: rr, Reference: rr.Reference}, nil
}

// parseLayoutRef parses the rest of oci:DIR[:tag] or oci:DIR@sha256:<hex>.
func parseLayoutRef(s, rest string) (Ref, error) {
	dir, ref := rest, "latest"
	if i := strings.LastIndex(rest, "@"); i >= 0 && strings.HasPrefix(rest[i+1:], "sha256:") {
		dir, ref = rest[:i], rest[i+1:]
		if err := ValidateDigest(ref); err != nil {
			return Ref{}, fmt.Errorf("reference %q: %w", s, err)
		}
	} else if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i+1:], "/") {
		dir, ref = rest[:i], rest[i+1:]
		if err := (registry.Reference{Reference: ref}).ValidateReferenceAsTag(); err != nil {
			return Ref{}, fmt.Errorf("reference %q: bad tag %q", s, ref)
		}
	}
	switch {
	case dir == "":
		return Ref{}, fmt.Errorf("reference %q: want oci:DIR[:tag] or oci:DIR@sha256:<hex>", s)
	case strings.HasSuffix(dir, ":sha256") || strings.Contains(dir, "@sha256:") || strings.HasSuffix(dir, "@sha256"):
		return Ref{}, fmt.Errorf("reference %q: name a digest as oci:DIR@sha256:<hex>", s)
	}
	return Ref{Dir: dir, Reference: ref}, nil
}

// redactRef masks the user-info part of a registry reference
// (user:password@host/... or scheme://user:password@host/...).
func redactRef(s string) string {
	scheme := ""
	if i := strings.Index(s, "://"); i >= 0 {
		scheme, s = s[:i+3], s[i+3:]
	}
	host := s
	if i := strings.IndexByte(s, '/'); i >= 0 {
		host = s[:i]
	}
	if j := strings.LastIndexByte(host, '@'); j >= 0 {
		s = "***@" + s[j+1:]
	}
	return scheme + s
}

// TargetOptions say how to reach a registry.
type TargetOptions struct {
	PlainHTTP bool              // http instead of https (loopback, insecure networks)
	Transport http.RoundTripper // nil: the default (with retries)
	// Credentials: nil means the docker config (config.json, credsStore,
	// credHelpers).
	Credentials credentials.Store
	// Mirrors are tried in order before every registry for what they may
	// serve (blobs and manifests by digest; see mirrors.go); nil means
	// OBDVOL_MIRRORS (comma-separated), an empty list none.
	Mirrors []string
	// HostsDir holds per-registry <host>/hosts.toml files (containerd's
	// format); "" means OBDVOL_HOSTS_DIR, else DefaultHostsDir.
	HostsDir string
	// MirrorsOnly: what mirrors may serve (blobs and manifests by
	// digest) comes from the mirrors only; a request that no mirror
	// serves fails with ErrUnavailable and the origin is never asked (a
	// mirror-only fill). OpenTarget fails with ErrNoMirror when the
	// registry has no mirror.
	MirrorsOnly bool
}

// ErrNoMirror is returned by OpenTarget with MirrorsOnly for a registry
// that has no mirror configured.
var ErrNoMirror = errors.New("no mirror configured")

// Target is where an artifact is pushed to or pulled from.
type Target struct {
	oras.Target
	Ref  Ref
	Repo *remote.Repository // nil for layouts

	mirrors *mirrorTransport // nil: no mirror or server configured
}

// OpenTarget opens the layout directory or registry repository of ref.
// TLS is verified unless PlainHTTP is set.
func OpenTarget(ref Ref, opts TargetOptions) (*Target, error) {
	if ref.IsLayout() {
		st, err := oci.New(ref.Dir)
		if err != nil {
			return nil, fmt.Errorf("oci layout %s: %w", ref.Dir, err)
		}
		return &Target{Target: st, Ref: ref}, nil
	}
	repo, err := remote.NewRepository(ref.Remote.Registry + "/" + ref.Remote.Repository)
	if err != nil {
		return nil, err
	}
	repo.PlainHTTP = opts.PlainHTTP
	store, err := credentialStore(opts)
	if err != nil {
		return nil, err
	}
	tr := opts.Transport
	if tr == nil {
		tr = wrapRetry(http.DefaultTransport)
	}
	mc, err := resolveMirrors(ref.Remote.Registry, opts)
	if err != nil {
		return nil, fmt.Errorf("mirrors of %s: %w", ref.Remote.Registry, err)
	}
	if opts.MirrorsOnly && (mc == nil || len(mc.mirrors) == 0) {
		return nil, fmt.Errorf("registry %s (--mirror, %s, %s/%s/hosts.toml): %w", ref.Remote.Registry, EnvMirrors,
			hostsDirOf(opts), ref.Remote.Registry, ErrNoMirror)
	}
	var mt *mirrorTransport
	if mc != nil {
		if mt, err = newMirrorTransport(ref.Remote, mc, tr, opts.Transport, store); err != nil {
			return nil, fmt.Errorf("mirrors of %s: %w", ref.Remote.Registry, err)
		}
		mt.mirrorsOnly = opts.MirrorsOnly
		tr = mt
	}
	repo.Client = newAuthClient(tr, store)
	return &Target{Target: repo, Ref: ref, Repo: repo, mirrors: mt}, nil
}

// wrapRetry adds oras' retries (with backoff, on 5xx, 429 and network
// errors) to a transport. http.DefaultTransport under it honours
// HTTP_PROXY, HTTPS_PROXY and NO_PROXY (http.ProxyFromEnvironment).
func wrapRetry(tr http.RoundTripper) http.RoundTripper { return retry.NewTransport(tr) }

func credentialStore(opts TargetOptions) (credentials.Store, error) {
	if opts.Credentials != nil {
		return opts.Credentials, nil
	}
	ds, err := credentials.NewStoreFromDocker(credentials.StoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("docker credentials: %w", err)
	}
	return ds, nil
}

func authClient(opts TargetOptions) (*auth.Client, error) {
	store, err := credentialStore(opts)
	if err != nil {
		return nil, err
	}
	tr := opts.Transport
	if tr == nil {
		tr = wrapRetry(http.DefaultTransport)
	}
	return newAuthClient(tr, store), nil
}

func newAuthClient(tr http.RoundTripper, store credentials.Store) *auth.Client {
	return &auth.Client{
		Client:     &http.Client{Transport: tr},
		Cache:      auth.NewCache(),
		Credential: credentials.Credential(store),
		Header:     http.Header{"User-Agent": {"obdvol"}},
	}
}

// Login checks user/password against the registry host and stores them
// in the docker config (or its credential helper).
func Login(ctx context.Context, host, user, password string, opts TargetOptions) error {
	store, err := dockerStore(opts)
	if err != nil {
		return err
	}
	reg, err := remote.NewRegistry(host)
	if err != nil {
		return err
	}
	reg.PlainHTTP = opts.PlainHTTP
	client, err := authClient(TargetOptions{Transport: opts.Transport, Credentials: credentials.NewMemoryStore()})
	if err != nil {
		return err
	}
	reg.Client = client
	if err := credentials.Login(ctx, store, reg, auth.Credential{Username: user, Password: password}); err != nil {
		return fmt.Errorf("login to %s as %s failed: %w", host, user, redact(err, password))
	}
	return nil
}

// Logout removes the stored credentials of host.
func Logout(ctx context.Context, host string, opts TargetOptions) error {
	store, err := dockerStore(opts)
	if err != nil {
		return err
	}
	return credentials.Logout(ctx, store, host)
}

func dockerStore(opts TargetOptions) (credentials.Store, error) {
	if opts.Credentials != nil {
		return opts.Credentials, nil
	}
	ds, err := credentials.NewStoreFromDocker(credentials.StoreOptions{AllowPlaintextPut: true})
	if err != nil {
		return nil, fmt.Errorf("docker credentials: %w", err)
	}
	return ds, nil
}

// redact keeps a secret out of an error message.
func redact(err error, secret string) error {
	if secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return fmt.Errorf("%s", strings.ReplaceAll(err.Error(), secret, "***"))
}
