package ackgate

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/appclient"
)

// An informational answer (103 Early Hints, as net/http's WriteHeader(103) or Node's
// writeEarlyHints send it) precedes the real answer on the same connection. It must be read
// and discarded: returning it as the push's answer leaves the real one unread, and the next
// push on the connection reads it as its own (here B's 500 would become a success).
func TestPushSkipsEarlyHints(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch r.Header.Get("ce-id") {
		case "A":
			w.Header().Set("Link", "</style.css>; rel=preload; as=style")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			w.WriteHeader(http.StatusOK)
		case "B":
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	p := NewPusher(PushOptions{URL: srv.URL, Timeout: 2 * time.Second, MaxResponseBytes: 1024}, nil)
	defer p.Close()
	a := p.Push(context.Background(), &adapters.Delivery{ID: "A"}, 1, false)
	if a.Verdict != Success || a.Status != 200 {
		t.Fatalf("A (103 then 200): verdict %v status %d (%v), want success 200", a.Verdict, a.Status, a.Err)
	}
	b := p.Push(context.Background(), &adapters.Delivery{ID: "B"}, 1, false)
	if b.Verdict == Success || b.Status != 500 {
		t.Fatalf("B (500): verdict %v status %d (%v): it read another push's answer", b.Verdict, b.Status, b.Err)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections: the connection should be reused after a well-framed 103", n)
	}
}

// Informational answers of every kind, several in a row, and 101 (which switches the
// connection to another protocol: a failed push, and the connection is closed).
func TestPushInformationalAnswers(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	cases := []struct {
		name   string
		resp   string
		want   Verdict
		status int
		reused bool
	}{
		{"100 continue", "HTTP/1.1 100 Continue\r\n\r\n" + ok, Success, 200, true},
		{"103 with headers", "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\nLink: </b>; rel=preload\r\n\r\n" + ok, Success, 200, true},
		{"three 1xx", "HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 199 Whatever\r\nX: y\r\n\r\n" + ok, Success, 200, true},
		{"1xx with a length", "HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\n\r\n" + ok, Success, 200, true},
		{"1xx then chunked 500", "HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n", Retry, 500, true},
		{"1xx then close", "HTTP/1.1 103 Early Hints\r\n\r\n", Retry, 0, false},
		{"101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n" + ok, Retry, 101, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			url, conns := rawServer(t, func(n int) (string, bool) {
				if n%2 == 1 {
					return c.resp, false
				}
				return "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", false
			})
			p := NewPusher(PushOptions{URL: url, Timeout: time.Second, MaxResponseBytes: 1024}, nil)
			defer p.Close()
			r := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false)
			if r.Verdict != c.want || r.Status != c.status {
				t.Fatalf("verdict %v status %d (%v), want %v %d", r.Verdict, r.Status, r.Err, c.want, c.status)
			}
			// The second push is answered 503: it must read exactly that.
			r = p.Push(context.Background(), &adapters.Delivery{ID: "y"}, 1, false)
			if r.Verdict != Retry || r.Status != 503 {
				t.Fatalf("next push: verdict %v status %d (%v), want retry 503", r.Verdict, r.Status, r.Err)
			}
			if reused := conns.Load() == 1; reused != c.reused {
				t.Fatalf("%d connections, reuse wanted: %v", conns.Load(), c.reused)
			}
		})
	}
}

// Bytes after the answer that nobody asked for: the framing is in doubt, the connection is
// not reused.
func TestPushUnsolicitedBytesCloseTheConnection(t *testing.T) {
	url, conns := rawServer(t, func(n int) (string, bool) {
		if n == 1 {
			return "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false
		}
		return "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", false
	})
	p := NewPusher(PushOptions{URL: url, Timeout: time.Second, MaxResponseBytes: 1024}, nil)
	defer p.Close()
	if r := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false); r.Verdict != Success {
		t.Fatalf("first push: %+v", r)
	}
	if r := p.Push(context.Background(), &adapters.Delivery{ID: "y"}, 1, false); r.Verdict != Retry || r.Status != 500 {
		t.Fatalf("second push read the first one's extra answer: verdict %v status %d", r.Verdict, r.Status)
	}
	if conns.Load() != 2 {
		t.Fatalf("%d connections, want 2", conns.Load())
	}
}

// The gate against an app that sends 103 before every answer and fails some first
// attempts: every message delivered once per scripted attempt, in lane order, none lost.
func TestGateWithEarlyHintsApp(t *testing.T) {
	a, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		w.Header().Set("Link", "</x>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		if attempt == 1 && id[len(id)-1] == '7' {
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return false
	})
	src := newFakeSource()
	o := opts(url)
	o.MaxInflight = 8
	start(t, src, openStore(t), o)
	const lanes, per = 4, 50
	for i := 0; i < per; i++ {
		for l := 0; l < lanes; l++ {
			src.send(fmt.Sprintf("p%d-%03d", l, i), "p"+strconv.Itoa(l), "")
		}
	}
	waitFor(t, "all settled", func() bool { return src.settledCount() == lanes*per })
	for i := 0; i < per; i++ {
		for l := 0; l < lanes; l++ {
			id := fmt.Sprintf("p%d-%03d", l, i)
			want := 1
			if id[len(id)-1] == '7' {
				want = 2
			}
			if r := src.results(id); len(r) != 1 || r[0] != nil {
				t.Fatalf("%s settled %v", id, r)
			}
			hs := a.headers(id)
			if len(hs) != want {
				t.Fatalf("%s pushed %d times, want %d", id, len(hs), want)
			}
			for n, h := range hs {
				if h.Get("ce-deliveryattempt") != strconv.Itoa(n+1) {
					t.Fatalf("%s push %d: attempt %q", id, n+1, h.Get("ce-deliveryattempt"))
				}
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	last := map[byte]string{}
	for _, id := range a.order {
		if prev, ok := last[id[1]]; ok && id < prev {
			t.Fatalf("lane %c: %s pushed after %s", id[1], id, prev)
		}
		last[id[1]] = id
	}
}

// endlessServer writes head, then fill forever (until the client goes away).
func endlessServer(t *testing.T, head, fill string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	chunk := strings.Repeat(fill, 64<<10/len(fill))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				if _, err := io.WriteString(c, head); err != nil {
					return
				}
				for {
					if _, err := io.WriteString(c, chunk); err != nil {
						return
					}
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String() + "/"
}

// An answer whose header block never ends (one endless header, or endless informational
// answers) fails the push once appclient.MaxHeaderBytes were read, long before app.timeout.
func TestPushHeaderLimit(t *testing.T) {
	cases := map[string]struct{ head, fill string }{
		"endless header":       {"HTTP/1.1 200 OK\r\nX-Endless: ", "a"},
		"endless status line":  {"HTTP/1.1 200 ", "O"},
		"endless 1xx answers":  {"", "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"},
		"endless header lines": {"HTTP/1.1 200 OK\r\n", "X-A: b\r\n"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			url := endlessServer(t, c.head, c.fill)
			p := NewPusher(PushOptions{URL: url, Timeout: 5 * time.Second, MaxResponseBytes: 1024}, nil)
			defer p.Close()
			t0 := time.Now()
			r := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false)
			if r.Verdict != Retry || r.Err == nil || !strings.Contains(r.Err.Error(), "exceed") {
				t.Fatalf("verdict %v status %d err %v, want a failed push over the header limit", r.Verdict, r.Status, r.Err)
			}
			if d := time.Since(t0); d > 3*time.Second {
				t.Fatalf("took %v: the header limit did not stop it", d)
			}
		})
	}
}

// A header block just under the limit is fine, and the body after it is not limited.
func TestPushLargeHeadersUnderTheLimit(t *testing.T) {
	body := strings.Repeat("b", 3000)
	url, _ := rawServer(t, func(int) (string, bool) {
		return "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", appclient.MaxHeaderBytes-200) + "\r\nContent-Length: 3000\r\n\r\n" + body, false
	})
	p := NewPusher(PushOptions{URL: url, Timeout: 5 * time.Second, MaxResponseBytes: 4096}, nil)
	defer p.Close()
	r := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false)
	if r.Verdict != Success {
		t.Fatalf("verdict %v (%v)", r.Verdict, r.Err)
	}
}

// A body longer than max_response_bytes is not read to its end, whatever its framing: the
// push ends once the answer is known, and the connection is closed.
func TestPushLongBodyNotDrained(t *testing.T) {
	cases := map[string]struct{ head, fill string }{
		"endless chunked":     {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "4\r\nabcd\r\n"},
		"huge content-length": {"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", "a"},
		"huge http/1.0":       {"HTTP/1.0 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", "a"},
		"until close":         {"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", "a"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			url := endlessServer(t, c.head, c.fill)
			p := NewPusher(PushOptions{URL: url, Timeout: 5 * time.Second, MaxResponseBytes: 1024}, nil)
			defer p.Close()
			t0 := time.Now()
			r := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false)
			if r.Verdict != Success {
				t.Fatalf("verdict %v (%v), want success", r.Verdict, r.Err)
			}
			if d := time.Since(t0); d > 2*time.Second {
				t.Fatalf("took %v: the body was drained", d)
			}
		})
	}
}
