package ackgate

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/appclient"
)

// rawServer answers each request on a connection with reply(n), n counting requests over
// all connections, and closes the connection after it when closeAfter says so.
func rawServer(t *testing.T, reply func(n int) (resp string, closeAfter bool)) (url string, conns *atomic.Int64) {
	t.Helper()
	return rawServerReq(t, func(n int, _ *http.Request) (string, bool) { return reply(n) })
}

func rawServerReq(t *testing.T, reply func(n int, req *http.Request) (resp string, closeAfter bool)) (url string, conns *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns = &atomic.Int64{}
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					resp, closeAfter := reply(int(n.Add(1)), req)
					if _, err := io.WriteString(c, resp); err != nil || closeAfter {
						return
					}
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String() + "/in", conns
}

func TestPoolReusesConnections(t *testing.T) {
	url, conns := rawServer(t, func(int) (string, bool) { return "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false })
	p := NewPusher(PushOptions{URL: url, Timeout: time.Second, MaxResponseBytes: 1024}, nil)
	defer p.Close()
	for i := 0; i < 20; i++ {
		if r := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false); r.Verdict != Success {
			t.Fatalf("push %d: %+v", i, r)
		}
	}
	if conns.Load() != 1 {
		t.Fatalf("%d connections for 20 sequential pushes, want 1", conns.Load())
	}
}

// An app that closes idle keep-alive connections (Node.js does after 5 s) must not turn the
// next push into a failure: the closed connection is noticed before it is reused.
func TestPoolSkipsConnectionsClosedWhileIdle(t *testing.T) {
	url, conns := rawServer(t, func(int) (string, bool) {
		return "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true // closes without saying so
	})
	p := NewPusher(PushOptions{URL: url, Timeout: time.Second, MaxResponseBytes: 1024}, nil)
	defer p.Close()
	// Check every reuse, so the test need not idle.
	p.pool, _ = appclient.New(appclient.Options{URL: url, Conns: 1, CheckAfter: -1})
	for i := 0; i < 5; i++ {
		time.Sleep(20 * time.Millisecond) // let the close arrive
		if r := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false); r.Verdict != Success {
			t.Fatalf("push %d: %+v", i, r)
		}
	}
	if conns.Load() != 5 {
		t.Fatalf("expected a fresh connection per push, got %d", conns.Load())
	}
}

// A push cut off unanswered is a failed attempt, never silently resent.
func TestPoolDoesNotResendUnansweredPush(t *testing.T) {
	url, conns := rawServer(t, func(int) (string, bool) { return "", true })
	p := NewPusher(PushOptions{URL: url, Timeout: time.Second, MaxResponseBytes: 1024}, nil)
	defer p.Close()
	if r := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false); r.Verdict != Retry {
		t.Fatalf("got %+v, want a retry verdict", r)
	}
	if conns.Load() != 1 {
		t.Fatalf("%d connections: the request was resent", conns.Load())
	}
}

func TestPoolResponseFraming(t *testing.T) {
	cases := map[string]struct {
		resp string
		want Verdict
	}{
		"chunked dapr drop":  {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n{\"status\":\"DROP\"}\r\n0\r\n\r\n", Drop},
		"connection close":   {"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nbusy", Retry},
		"http/1.0 until eof": {"HTTP/1.0 200 OK\r\n\r\n{\"status\":\"RETRY\"}", Retry},
		"garbage status":     {"HTTP/1.1 abc nope\r\n\r\n", Retry},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			url, _ := rawServer(t, func(int) (string, bool) { return c.resp, true })
			p := NewPusher(PushOptions{URL: url, Timeout: time.Second, MaxResponseBytes: 1024}, nil)
			defer p.Close()
			r := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false)
			if r.Verdict != c.want {
				t.Fatalf("verdict %v (%v), want %v", r.Verdict, r.Err, c.want)
			}
		})
	}
}

func TestPoolLargeBodyNotReused(t *testing.T) {
	big := strings.Repeat("a", 5000)
	url, conns := rawServer(t, func(int) (string, bool) {
		return "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + big, false
	})
	p := NewPusher(PushOptions{URL: url, Timeout: time.Second, MaxResponseBytes: 100}, nil)
	defer p.Close()
	for i := 0; i < 3; i++ {
		if r := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false); r.Verdict != Success {
			t.Fatalf("push %d: %+v", i, r)
		}
	}
	if conns.Load() != 3 {
		t.Fatalf("connections %d: a connection with an unread body must not be reused", conns.Load())
	}
}

func TestPoolCancelInterruptsPush(t *testing.T) {
	url, _ := rawServer(t, func(int) (string, bool) { time.Sleep(5 * time.Second); return "", true })
	p := NewPusher(PushOptions{URL: url, Timeout: 10 * time.Second, MaxResponseBytes: 100}, nil)
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	t0 := time.Now()
	r := p.Push(ctx, &adapters.Delivery{ID: "x"}, 1, false)
	if r.Verdict != Retry || time.Since(t0) > 2*time.Second {
		t.Fatalf("got %+v after %v", r, time.Since(t0))
	}
}
