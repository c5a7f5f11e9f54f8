package faultproxy

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Bearer makes the proxy a registry that wants bearer tokens, as Docker
// Hub, GHCR, Harbor and most hosted registries do, and its token server:
// a request without a valid token is answered 401 with
//
//	WWW-Authenticate: Bearer realm="http://<proxy>/token",service="faultproxy",scope="repository:<name>:<actions>"
//
// GET /token checks the basic credentials User and Password and issues a
// token; a token expires after Uses requests or after TTL, whichever is
// first (0: no such limit), which is how a long lazy session or push
// sees its token expire. Authorised requests are forwarded upstream
// without their Authorization header. Scopes are not enforced.
type Bearer struct {
	User, Password string
	Uses           int
	TTL            time.Duration
}

// bearerState is the token server's state.
type bearerState struct {
	mu     sync.Mutex
	conf   *Bearer
	tokens map[string]*token

	issued, denied, unauthorized atomic.Int64
}

type token struct {
	uses    int // requests left; < 0: no limit
	expires time.Time
}

// SetBearer turns bearer authentication on (nil: off). Tokens issued
// before are forgotten.
func (p *Proxy) SetBearer(b *Bearer) {
	p.bearer.mu.Lock()
	defer p.bearer.mu.Unlock()
	p.bearer.conf = nil
	if b != nil {
		c := *b
		p.bearer.conf = &c
	}
	p.bearer.tokens = map[string]*token{}
}

// BearerStats count the token server's work: tokens issued, token
// requests refused (wrong credentials) and requests answered 401.
type BearerStats struct{ Issued, Denied, Unauthorized int64 }

// BearerStats returns the token server's counters.
func (p *Proxy) BearerStats() BearerStats {
	return BearerStats{Issued: p.bearer.issued.Load(), Denied: p.bearer.denied.Load(), Unauthorized: p.bearer.unauthorized.Load()}
}

// gate handles /token and refuses requests without a valid token; it
// reports whether it answered r. An authorised request loses its
// Authorization header.
func (p *Proxy) gate(w http.ResponseWriter, r *http.Request) bool {
	s := &p.bearer
	s.mu.Lock()
	conf := s.conf
	s.mu.Unlock()
	if conf == nil {
		return false
	}
	if r.URL.Path == "/token" {
		user, pass, ok := r.BasicAuth()
		if !ok || user != conf.User || pass != conf.Password {
			s.denied.Add(1)
			w.Header().Set("WWW-Authenticate", `Basic realm="faultproxy"`)
			writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "wrong user name or password")
			return true
		}
		var raw [16]byte
		rand.Read(raw[:])
		tok := hex.EncodeToString(raw[:])
		t := &token{uses: -1}
		if conf.Uses > 0 {
			t.uses = conf.Uses
		}
		if conf.TTL > 0 {
			t.expires = time.Now().Add(conf.TTL)
		}
		s.mu.Lock()
		s.tokens[tok] = t
		s.mu.Unlock()
		s.issued.Add(1)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300})
		return true
	}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && s.use(tok) {
		r.Header.Del("Authorization")
		return false
	}
	s.unauthorized.Add(1)
	ch := `Bearer realm="http://` + p.Addr + `/token",service="faultproxy"`
	if name := repoName(r.URL.Path); name != "" {
		actions := "pull"
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			actions = "pull,push"
		}
		ch += `,scope="repository:` + name + ":" + actions + `"`
	}
	w.Header().Set("WWW-Authenticate", ch)
	writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
	return true
}

// use spends one request of token tok; false if it is unknown or expired.
func (s *bearerState) use(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[tok]
	switch {
	case t == nil:
		return false
	case t.uses == 0 || !t.expires.IsZero() && time.Now().After(t.expires):
		delete(s.tokens, tok)
		return false
	case t.uses > 0:
		t.uses--
	}
	return true
}

// repoName is the repository of a registry API path
// (/v2/<name>/blobs/..., /manifests/..., /tags/...), or "".
func repoName(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return ""
	}
	for _, sep := range []string{"/blobs/", "/manifests/", "/tags/"} {
		if i := strings.Index(rest, sep); i > 0 {
			return rest[:i]
		}
	}
	return ""
}

// writeError answers with a distribution-spec error body.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}
