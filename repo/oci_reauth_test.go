package repo

import (
	"context"
	"encoding/base64"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// bearerProxy starts a registry and a fault proxy in front of it that
// wants bearer tokens good for uses requests, and writes a docker config
// (DOCKER_CONFIG, for this test) holding password for testUser there.
func bearerProxy(t *testing.T, uses int, password string) (*regtest.Registry, *faultproxy.Proxy) {
	t.Helper()
	reg := regtest.Start(t)
	p := faultproxy.Start(t, reg.Addr)
	p.SetBearer(&faultproxy.Bearer{User: testUser, Password: testPassword, Uses: uses})
	dir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dir)
	auth := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + password))
	conf := `{"auths":{"` + p.Addr + `":{"auth":"` + auth + `"}}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return reg, p
}

// dockerTarget opens ref with the credentials of the docker config.
func dockerTarget(t *testing.T, ref string) *Target {
	t.Helper()
	r, err := ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := OpenTarget(r, TargetOptions{PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// A token that expires every few requests, during a long lazy session:
// each 401 makes obdvol fetch a new token once and go on; every read is
// byte-exact.
func TestLazyReauthenticates(t *testing.T) {
	_, p := bearerProxy(t, 3, testPassword)
	a := newStore(t)
	cfg := chainOf(t, a, 31, 2<<20)
	if _, err := Push(context.Background(), a, dockerTarget(t, p.Addr+"/auth:v1"), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	d := cfg.Layers[0].Digest
	data, err := os.ReadFile(mustPath(a, d))
	if err != nil {
		t.Fatal(err)
	}
	issued := p.BearerStats().Issued
	s := newStore(t)
	b := openLazy(t, s, d, RegistryRanges{Repo: dockerTarget(t, p.Addr+"/auth:v1").Repo}, len(data))
	r := rand.New(rand.NewSource(2))
	for i := 0; i < 30; i++ {
		off := r.Int63n(int64(len(data)) - 4096)
		if err := readAtCheck(b, data, off, 1+r.Int63n(4096)); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	readAll(t, b, data)
	if st := p.BearerStats(); st.Issued-issued < 5 {
		t.Fatalf("a lazy session with tokens good for 3 requests got %d tokens: %+v", st.Issued-issued, st)
	}
}

// A push whose token expires between blobs and between an upload's POST
// and its PUT completes, and pulls back byte-exact.
func TestPushReauthenticates(t *testing.T) {
	for _, uses := range []int{2, 3, 4, 5} {
		_, p := bearerProxy(t, uses, testPassword)
		a := newStore(t)
		cfg := chainOf(t, a, 32, 300<<10, 200<<10, 100<<10)
		res, err := Push(context.Background(), a, dockerTarget(t, p.Addr+"/auth:v1"), cfg, PushOptions{Concurrency: 1})
		if err != nil {
			t.Fatalf("push with tokens good for %d requests: %v", uses, err)
		}
		var total int64
		for _, l := range cfg.Layers {
			total += l.Size
		}
		if res.BytesMoved < total || res.BytesMoved > total+4096 { // the layers and the config
			t.Fatalf("push with tokens good for %d requests moved %d bytes, layers hold %d", uses, res.BytesMoved, total)
		}
		b := newStore(t)
		if _, err := Pull(context.Background(), b, dockerTarget(t, p.Addr+"/auth:v1"), PullOptions{}); err != nil {
			t.Fatalf("pull with tokens good for %d requests: %v", uses, err)
		}
		sameBlobs(t, a, b, cfg)
		if st := p.BearerStats(); st.Issued < 3 || st.Unauthorized == 0 {
			t.Fatalf("tokens good for %d requests: %+v", uses, p.BearerStats())
		}
	}
}

// Wrong credentials: a clear error that names the failure and never
// shows the password.
func TestWrongCredentials(t *testing.T) {
	_, p := bearerProxy(t, 0, testPassword+"-wrong")
	a := newStore(t)
	cfg := chainOf(t, a, 33, 1000)
	_, err := Push(context.Background(), a, dockerTarget(t, p.Addr+"/auth:v1"), cfg, PushOptions{})
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("push with a wrong password: %v", err)
	}
	noSecret(t, "push error", err.Error())
	if strings.Contains(err.Error(), base64.StdEncoding.EncodeToString([]byte(testUser+":"+testPassword+"-wrong"))) {
		t.Fatalf("push error shows the credentials: %v", err)
	}
	_, err = Pull(context.Background(), newStore(t), dockerTarget(t, p.Addr+"/auth:v1"), PullOptions{})
	if err == nil || !IsUnauthorized(err) {
		t.Fatalf("pull with a wrong password: %v", err)
	}
	noSecret(t, "pull error", err.Error())
}
