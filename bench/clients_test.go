package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
)

// TestPosters: both clients' requests arrive as net/http reads them (body, length, key),
// their answers' statuses come back whatever their body (chunked, none), one connection is
// kept alive across requests, and a connection the server broke is dialled again.
func TestPosters(t *testing.T) {
	t.Run("lean", func(t *testing.T) {
		testPoster(t, func(url string) (poster, error) { return newLeanClient(url, 1) }, 2)
	})
	// net/http's Transport sends a request with an Idempotency-Key again, on a new
	// connection, when the reused one broke before an answer: the broken one dials twice.
	t.Run("net/http", func(t *testing.T) {
		testPoster(t, func(url string) (poster, error) { return netHTTPClient(url), nil }, 3)
	})
}

func testPoster(t *testing.T, newPoster func(url string) (poster, error), wantConns int32) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		switch {
		case err != nil || r.Method != http.MethodPost || r.URL.Path != "/v1/publish/t":
			http.Error(w, "bad request", http.StatusBadRequest)
		case r.Header.Get("Content-Type") != "application/octet-stream":
			http.Error(w, "no content type", http.StatusUnsupportedMediaType)
		case r.Header.Get("Idempotency-Key") == "break":
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
		case r.Header.Get("Idempotency-Key") == "none":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("X-Key", r.Header.Get("Idempotency-Key"))
			_, _ = io.WriteString(w, strings.Repeat("r", len(body))+r.Header.Get("Idempotency-Key"))
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	post, err := newPoster(srv.URL + "/v1/publish/t")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i, c := range []struct {
		body, key string
		status    int
		err       bool
	}{
		{"hello", "", 200, false},
		{strings.Repeat("p", 5000), "k1", 200, false},
		{"x", "none", 204, false},
		{"y", "k2", 200, false},
		{"z", "break", 0, true},
		{"again", "k3", 200, false},
	} {
		st, err := post(ctx, []byte(c.body), c.key)
		if (err != nil) != c.err || st != c.status {
			t.Fatalf("request %d (key %q): status %d, error %v; want %d, error %v", i, c.key, st, err, c.status, c.err)
		}
	}
	if n := conns.Load(); n != wantConns {
		t.Fatalf("%d connections; want %d (one kept alive until the server broke it, then more)", n, wantConns)
	}
}

// The steal share is the stolen ticks over all ticks between two readings, and a reading
// of this machine's /proc/stat adds up.
func TestStealShare(t *testing.T) {
	if got := stealShare(1000, 10, 2000, 260); got != 0.25 {
		t.Fatalf("stealShare = %v; want 0.25", got)
	}
	if got := stealShare(1000, 10, 1000, 10); got != 0 {
		t.Fatalf("stealShare without ticks = %v; want 0", got)
	}
	if runtime.GOOS != "linux" {
		return // /proc/stat is Linux's
	}
	total, steal := boxCPU()
	if total <= 0 || steal < 0 || steal > total {
		t.Fatalf("boxCPU = %v, %v; want a total above 0 and steal within it", total, steal)
	}
}
