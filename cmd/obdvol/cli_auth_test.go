package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// Wrong registry credentials (from the docker config) give a clear error
// of kind "unauthorized", exit 1, that shows neither the password nor the
// encoded credentials.
func TestCLIWrongCredentials(t *testing.T) {
	reg := regtest.Start(t)
	p := faultproxy.Start(t, reg.Addr)
	p.SetBearer(&faultproxy.Bearer{User: "alice", Password: "right-pw-91c2"})
	dir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dir)
	enc := base64.StdEncoding.EncodeToString([]byte("alice:wrong-pw-5d7e"))
	conf := `{"auths":{"` + p.Addr + `":{"auth":"` + enc + `"}}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newCLI(t)
	msg := h.jsonErr(1, "unauthorized", "pull", "--plain-http", p.Addr+"/golden:v1", "vol")
	if strings.Contains(msg, "wrong-pw-5d7e") || strings.Contains(msg, enc) || !strings.Contains(msg, "401") {
		t.Fatalf("error for wrong credentials: %s", msg)
	}
	t.Logf("error: %s", msg)
	if p.BearerStats().Denied == 0 {
		t.Fatalf("the token server was not asked: %+v", p.BearerStats())
	}
	r := h.fails(1, []string{"401"}, "pull", "--plain-http", p.Addr+"/golden:v1", "vol")
	if strings.Contains(r.stderr, "wrong-pw-5d7e") || strings.Contains(r.stderr, enc) {
		t.Fatalf("stderr shows the credentials: %s", r.stderr)
	}
}
