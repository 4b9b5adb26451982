package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestLeanClient: the lean client's requests arrive as net/http reads them (body, length,
// key), its answers' statuses come back whatever their body, one connection is kept alive
// across requests, and a connection the server broke is dialled again.
func TestLeanClient(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		switch {
		case err != nil || r.Method != http.MethodPost || r.URL.Path != "/v1/publish/t":
			http.Error(w, "bad request", http.StatusBadRequest)
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
	post, err := newLeanClient(srv.URL+"/v1/publish/t", 1)
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
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections; want 2 (one kept alive until the server broke it, then one more)", n)
	}
	if _, err := newLeanClient("https://example.com/", 1); err == nil {
		t.Fatal("https:// accepted; the lean client speaks plain http only")
	}
}
