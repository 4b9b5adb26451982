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
	p.pool.checkAfter = 0 // check every reuse, so the test need not idle
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

// TestReadResponse checks the allocation-free parser against net/http.ReadResponse, the
// reference, on answers it handles and on those it must leave to net/http.
func TestReadResponse(t *testing.T) {
	const maxBody = 16
	cases := []struct {
		name, raw string
		simple    bool // readSimple must take it
	}{
		{"empty 200", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nDate: x\r\n\r\n", true},
		{"no reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", true},
		{"dapr body", "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 19\r\n\r\n{\"status\":\"RETRY\"}\n", true},
		{"retry-after", "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nRetry-After: 9\r\nContent-Length: 4\r\n\r\nbusy", true},
		{"connection close", "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok", true},
		{"body too large", "HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 40\r\n\r\n0123456789012345678901234567890123456789", true},
		{"body at the limit", "HTTP/1.1 400 Bad Request\r\nContent-Length: 16\r\n\r\n0123456789012345", true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", false},
		{"no length", "HTTP/1.1 500 Internal Server Error\r\n\r\nboom", false},
		{"http/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n", false},
		{"two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", false},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nab", false},
		{"folded header", "HTTP/1.1 200 OK\r\nX-A: 1\r\n  2\r\nContent-Length: 0\r\n\r\n", false},
		{"bad status", "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", false},
		{"truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, _, simple := readSimple(bufioFull(c.raw))
			if simple != c.simple {
				t.Fatalf("readSimple took it: %v, want %v", simple, c.simple)
			}
			got, gotKeep, gotErr := readResponse(bufioFull(c.raw), &limitReader{max: maxHeaderBytes}, maxBody)

			// The reference: net/http parses, the body is read up to maxBody+1.
			var want response
			wantKeep := false
			resp, err := http.ReadResponse(bufioFull(c.raw), nil)
			if err == nil {
				want.status, want.retryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
				var b []byte
				b, err = io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
				if err == nil && int64(len(b)) <= maxBody {
					want.body, wantKeep = b, !resp.Close
				}
			}
			if (gotErr != nil) != (err != nil) {
				t.Fatalf("error %v, net/http's %v", gotErr, err)
			}
			if err != nil {
				return
			}
			if len(want.body) == 0 {
				want.body = nil
			}
			if len(got.body) == 0 {
				got.body = nil
			}
			if got.status != want.status || got.retryAfter != want.retryAfter || string(got.body) != string(want.body) || gotKeep != wantKeep {
				t.Fatalf("got %d %q %q keep=%v, net/http %d %q %q keep=%v",
					got.status, got.retryAfter, got.body, gotKeep, want.status, want.retryAfter, want.body, wantKeep)
			}
		})
	}
}

// bufioFull returns a reader whose buffer already holds raw, as after the socket read.
func bufioFull(raw string) *bufio.Reader {
	br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
	_, _ = br.Peek(1)
	return br
}
