package faultproxy_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

func TestBearer(t *testing.T) {
	reg := regtest.Start(t)
	p := faultproxy.Start(t, reg.Addr)
	p.SetBearer(&faultproxy.Bearer{User: "u", Password: "pw", Uses: 2})
	do := func(path, user, pass, tok string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+p.Addr+path, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	resp := do("/v2/t/x/tags/list", "", "", "")
	ch := resp.Header.Get("WWW-Authenticate")
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(ch, `Bearer realm="http://`+p.Addr+`/token"`) ||
		!strings.Contains(ch, `scope="repository:t/x:pull"`) {
		t.Fatalf("request without a token: %s, challenge %q", resp.Status, ch)
	}
	if resp := do("/token?service=faultproxy", "u", "wrong", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("token with a wrong password: %s", resp.Status)
	}
	resp = do("/token?service=faultproxy", "u", "pw", "")
	var tr struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || tr.Token == "" {
		t.Fatalf("token: %s, %v", resp.Status, err)
	}
	for i := 0; i < 2; i++ {
		if resp := do("/v2/", "", "", tr.Token); resp.StatusCode != http.StatusOK {
			t.Fatalf("use %d of a token good for 2: %s", i+1, resp.Status)
		}
	}
	if resp := do("/v2/", "", "", tr.Token); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("third use of a token good for 2: %s", resp.Status)
	}
	if st := p.BearerStats(); st.Issued != 1 || st.Denied != 1 || st.Unauthorized != 2 {
		t.Fatalf("bearer stats: %+v", st)
	}
	// A token past its TTL is refused.
	p.SetBearer(&faultproxy.Bearer{User: "u", Password: "pw", TTL: time.Millisecond})
	resp = do("/token?service=faultproxy", "u", "pw", "")
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || tr.Token == "" {
		t.Fatalf("token: %s, %v", resp.Status, err)
	}
	time.Sleep(20 * time.Millisecond)
	if resp := do("/v2/", "", "", tr.Token); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a token past its TTL: %s", resp.Status)
	}
	if strings.Contains(reg.Log(), tr.Token) {
		t.Fatal("the token reached the registry")
	}
}
