package faultproxy_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// upload pushes b as a blob of repo "t/x" monolithically (POST, then PUT
// with the body) and returns the PUT's status.
func upload(t *testing.T, host string, b []byte) (string, int) {
	t.Helper()
	dg := fmt.Sprintf("sha256:%x", sha256.Sum256(b))
	resp, err := http.Post("http://"+host+"/v2/t/x/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, "http") {
		loc = "http://" + host + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	req, _ := http.NewRequest(http.MethodPut, loc+sep+"digest="+dg, bytes.NewReader(b))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return dg, resp.StatusCode
}

func get(t *testing.T, url, rng string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func TestFaults(t *testing.T) {
	reg := regtest.Start(t)
	p := faultproxy.Start(t, reg.Addr)
	blob := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB

	p.Set(faultproxy.Faults{MaxRequestBody: 1000})
	if _, code := upload(t, p.Addr, blob); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("upload over the limit: %d, want 413", code)
	}
	if p.Stats().TooLarge != 1 {
		t.Fatalf("stats: %+v", p.Stats())
	}
	p.Set(faultproxy.Faults{})
	dg, code := upload(t, p.Addr, blob)
	if code != http.StatusCreated {
		t.Fatalf("upload: %d", code)
	}
	url := "http://" + p.Addr + "/v2/t/x/blobs/" + dg

	p.ResetStats()
	resp, body := get(t, url, "bytes=16-31")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, blob[16:32]) {
		t.Fatalf("plain range: %s %q", resp.Status, body)
	}
	if s := p.Stats(); s.RangeRequests != 1 || s.BlobGets != 1 || s.BytesOut != 16 {
		t.Fatalf("stats after one range: %+v", s)
	}

	p.Set(faultproxy.Faults{IgnoreRange: true})
	resp, body = get(t, url, "bytes=16-31")
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, blob) {
		t.Fatalf("ignored range: %s, %d bytes", resp.Status, len(body))
	}

	p.Set(faultproxy.Faults{ShiftContentRange: 16})
	resp, _ = get(t, url, "bytes=16-31")
	if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes 32-47/%d", len(blob)) {
		t.Fatalf("shifted Content-Range: %q", cr)
	}

	p.Set(faultproxy.Faults{ShortBody: true})
	resp, body = get(t, url, "bytes=0-1023")
	if resp.StatusCode != http.StatusPartialContent || len(body) >= 1024 {
		t.Fatalf("short body: %s, %d bytes", resp.Status, len(body))
	}

	p.Set(faultproxy.Faults{CorruptBody: true})
	resp, body = get(t, url, "bytes=16-31")
	if want := append([]byte{blob[16] ^ 0xff}, blob[17:32]...); resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, want) {
		t.Fatalf("corrupt body: %s %q", resp.Status, body)
	}
	resp, body = get(t, url, "")
	if resp.StatusCode != http.StatusOK || len(body) != len(blob) || body[0] != blob[0]^0xff || !bytes.Equal(body[1:], blob[1:]) {
		t.Fatalf("corrupt whole body: %s, %d bytes", resp.Status, len(body))
	}
}

// MaxInFlight counts requests held at once: one at a time reads 1;
// requests overlapping in the latency read more.
func TestMaxInFlight(t *testing.T) {
	reg := regtest.Start(t)
	p := faultproxy.Start(t, reg.Addr)
	for i := 0; i < 3; i++ {
		get(t, "http://"+p.Addr+"/v2/", "")
	}
	if s := p.Stats(); s.MaxInFlight != 1 || s.Requests != 3 {
		t.Fatalf("three requests one after another: %+v", s)
	}
	p.ResetStats()
	p.Set(faultproxy.Faults{Latency: 500 * time.Millisecond})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get("http://" + p.Addr + "/v2/")
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if s := p.Stats(); s.MaxInFlight < 2 || s.MaxInFlight > 4 {
		t.Fatalf("four requests at once: %+v", s)
	}
	// The handler ends just after the client has its answer.
	for end := time.Now().Add(10 * time.Second); p.InFlight() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d requests still in flight", p.InFlight())
		}
	}
}
