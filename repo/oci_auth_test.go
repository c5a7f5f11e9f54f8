package repo

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdvol/obdvol/tests/regtest"
	"oras.land/oras-go/v2/registry/remote/credentials"
)

const (
	testUser     = "alice"
	testPassword = "s3cret-pw-7f3a"
	// bcrypt (cost 4, to keep the registry quick) of testPassword.
	testHtpasswd = "alice:$2b$04$LrB1o/Bz1lf8vneHKbu55e5YkwJt9x3C384t7Iz6lDHUqk0Huwyey\n"
)

// startAuthRegistry starts a registry that wants basic auth (htpasswd):
// regtest's registry with an auth section added to its config, then
// restarted on the same port.
func startAuthRegistry(t *testing.T) *regtest.Registry {
	t.Helper()
	r, err := regtest.StartIn(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	htpasswd := filepath.Join(r.Dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(testHtpasswd), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.OpenFile(filepath.Join(r.Dir, "config.yml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg.WriteString("auth:\n  htpasswd:\n    realm: obdvol-test\n    path: " + htpasswd + "\n")
	cfg.Close()
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	return r
}

// noSecret fails the test if s shows the password.
func noSecret(t *testing.T, what, s string) {
	t.Helper()
	if strings.Contains(s, testPassword) {
		t.Fatalf("%s shows the password: %s", what, s)
	}
}

// Login checks the password and stores it in the docker config; targets
// opened without explicit credentials use it; Logout removes it. No
// error, and no registry log line, shows the password.
func TestLoginLogout(t *testing.T) {
	ctx := context.Background()
	reg := startAuthRegistry(t)
	dockerDir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dockerDir)
	opts := TargetOptions{PlainHTTP: true}
	a := newStore(t)
	cfg := chainOf(t, a, 21, 100000)
	ref, _ := ParseRef(reg.Addr + "/private:v1")
	open := func() *Target {
		tg, err := OpenTarget(ref, opts)
		if err != nil {
			t.Fatal(err)
		}
		return tg
	}
	if _, err := Push(ctx, a, open(), cfg, PushOptions{}); err == nil {
		t.Fatal("push without credentials succeeded")
	}
	err := Login(ctx, reg.Addr, testUser, testPassword+"x", opts)
	if err == nil {
		t.Fatal("login with a wrong password succeeded")
	}
	noSecret(t, "failed login", err.Error())
	if err := Login(ctx, reg.Addr, testUser, testPassword, opts); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dockerDir, "config.json")); err != nil || !strings.Contains(string(b), reg.Addr) {
		t.Fatalf("docker config after login: %s, %v", b, err)
	}
	if _, err := Push(ctx, a, open(), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Pull(ctx, newStore(t), open(), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Logout(ctx, reg.Addr, TargetOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = Pull(ctx, newStore(t), open(), PullOptions{})
	if err == nil {
		t.Fatal("pull after logout succeeded")
	}
	noSecret(t, "pull error", err.Error())
	noSecret(t, "registry log", reg.Log())
}

// A docker config naming a credential helper (credHelpers) is honoured.
func TestCredentialHelper(t *testing.T) {
	ctx := context.Background()
	reg := startAuthRegistry(t)
	dockerDir, bin := t.TempDir(), t.TempDir()
	t.Setenv("DOCKER_CONFIG", dockerDir)
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	helper := "#!/bin/sh\n[ \"$1\" = get ] || exit 1\ncat >/dev/null\n" +
		`echo '{"ServerURL":"` + reg.Addr + `","Username":"` + testUser + `","Secret":"` + testPassword + `"}'` + "\n"
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-obdvoltest"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := `{"credHelpers":{"` + reg.Addr + `":"obdvoltest"}}`
	if err := os.WriteFile(filepath.Join(dockerDir, "config.json"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	a := newStore(t)
	ref, _ := ParseRef(reg.Addr + "/helped:v1")
	tg, err := OpenTarget(ref, TargetOptions{PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Push(ctx, a, tg, chainOf(t, a, 22, 1000), PushOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TLS is verified unless asked otherwise: a registry with a certificate
// nobody signed is refused; the same registry through a transport that
// trusts its certificate works.
func TestTLSVerified(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	up, _ := url.Parse("http://" + reg.Addr)
	srv := httptest.NewUnstartedServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(up)
		r.SetXForwarded() // the registry then builds https upload URLs
		r.Out.Host = r.In.Host
	}})
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	srv.StartTLS()
	defer srv.Close()
	ref, err := ParseRef(strings.TrimPrefix(srv.URL, "https://") + "/tls:v1")
	if err != nil {
		t.Fatal(err)
	}
	a := newStore(t)
	cfg := chainOf(t, a, 23, 1000)
	mem := credentials.NewMemoryStore()
	tg, _ := OpenTarget(ref, TargetOptions{Credentials: mem})
	if _, err := Push(ctx, a, tg, cfg, PushOptions{}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("push to an unverifiable TLS registry: %v", err)
	}
	tg, _ = OpenTarget(ref, TargetOptions{Credentials: mem, Transport: srv.Client().Transport})
	if _, err := Push(ctx, a, tg, cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
}
