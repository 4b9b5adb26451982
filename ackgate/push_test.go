package ackgate

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
)

func TestPushHeaders(t *testing.T) {
	var got http.Header
	var body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		b, _ := io.ReadAll(r.Body)
		body = string(b)
	}))
	defer srv.Close()
	invalid := 0
	p := NewPusher(PushOptions{URL: srv.URL, Timeout: time.Second, EventType: "mqsidecar.message", MaxResponseBytes: 1024}, func(string) { invalid++ })
	d := &adapters.Delivery{
		ID: "id-1", Payload: []byte("hello"), Source: "kafka://orders", Key: "k1",
		Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), HasCoordinates: true, Partition: 3, Offset: 42,
		Headers: []adapters.Header{
			{Key: "traceparent", Value: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
			{Key: "tracestate", Value: "congo=t61rcWkgMzE"},
			{Key: "X-Tenant", Value: "acme"},
			{Key: "Connection", Value: "close"},           // hop-by-hop: dropped
			{Key: "Content-Length", Value: "999"},         // framing: dropped
			{Key: "ce-id", Value: "spoofed"},              // reserved prefix: dropped
			{Key: "bad header", Value: "x"},               // invalid name: dropped
			{Key: "X-Inject", Value: "a\r\nX-Evil: 1"},    // invalid value: dropped
			{Key: "Host", Value: "evil.example"},          // dropped
			{Key: "Transfer-Encoding", Value: "chunked"},  // dropped
			{Key: "Proxy-Authorization", Value: "secret"}, // dropped
		},
	}
	res := p.Push(context.Background(), d, 2, true)
	if res.Verdict != Success {
		t.Fatalf("verdict %v err %v", res.Verdict, res.Err)
	}
	want := map[string]string{
		"Ce-Specversion": "1.0", "Ce-Id": "id-1", "Ce-Source": "kafka://orders", "Ce-Type": "mqsidecar.message",
		"Ce-Time": "2026-01-02T03:04:05Z", "Ce-Partitionkey": "k1", "Ce-Partition": "3", "Ce-Offset": "42",
		"Ce-Deliveryattempt": "2", "Ce-Redelivered": "true", "Content-Type": "application/octet-stream",
		"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "Tracestate": "congo=t61rcWkgMzE",
		"X-Tenant": "acme",
	}
	for k, v := range want {
		if got.Get(k) != v {
			t.Errorf("header %s = %q, want %q", k, got.Get(k), v)
		}
	}
	for _, k := range []string{"X-Inject", "X-Evil", "Proxy-Authorization"} {
		if got.Get(k) != "" {
			t.Errorf("header %s forwarded: %q", k, got.Get(k))
		}
	}
	if got.Get("Ce-Id") != "id-1" || len(got.Values("Ce-Id")) != 1 {
		t.Errorf("ce-id overridden: %v", got.Values("Ce-Id"))
	}
	if body != "hello" {
		t.Errorf("body %q", body)
	}
	if invalid != 8 {
		t.Errorf("invalid header count %d, want 8", invalid)
	}

	// Not redelivered, no key, no coordinates, content type from the message.
	d2 := &adapters.Delivery{ID: "id-2", Payload: []byte("{}"), Source: "rabbitmq:///q", ContentType: "application/json",
		Headers: []adapters.Header{{Key: "content-type", Value: "application/json"}}}
	invalid = 0
	p.Push(context.Background(), d2, 1, false)
	if invalid != 0 {
		t.Errorf("the message's own content-type counted as an invalid header")
	}
	if got.Get("Ce-Redelivered") != "" || got.Get("Ce-Partitionkey") != "" || got.Get("Ce-Offset") != "" || got.Get("Ce-Time") != "" {
		t.Errorf("unexpected optional headers: %v", got)
	}
	if got.Get("Content-Type") != "application/json" {
		t.Errorf("content type %q", got.Get("Content-Type"))
	}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		name       string
		status     int
		header     map[string]string
		body       string
		want       Verdict
		retryAfter time.Duration
	}{
		{"200 empty", 200, nil, "", Success, 0},
		{"204", 204, nil, "", Success, 0},
		{"200 plain body", 200, nil, "thanks", Success, 0},
		{"200 json without status", 200, nil, `{"ok":true}`, Success, 0},
		{"dapr success", 200, nil, `{"status":"SUCCESS"}`, Success, 0},
		{"dapr retry", 200, nil, `{"status":"RETRY"}`, Retry, 0},
		{"dapr drop", 200, nil, `{"status":"DROP"}`, Drop, 0},
		{"dapr lower case", 200, nil, `{"status":"drop"}`, Drop, 0},
		{"dapr unknown status", 200, nil, `{"status":"MAYBE"}`, Retry, 0},
		{"429 retry-after seconds", 429, map[string]string{"Retry-After": "7"}, "", Retry, 7 * time.Second},
		{"503 retry-after", 503, map[string]string{"Retry-After": "2"}, "", Retry, 2 * time.Second},
		{"503 no retry-after", 503, nil, "", Retry, 0},
		{"429 bad retry-after", 429, map[string]string{"Retry-After": "soon"}, "", Retry, 0},
		{"500", 500, nil, "boom", Retry, 0},
		{"502", 502, nil, "", Retry, 0},
		{"408", 408, nil, "", Retry, 0},
		{"400", 400, nil, "bad", Permanent, 0},
		{"404", 404, nil, "", Permanent, 0},
		{"413", 413, nil, "", Permanent, 0},
		{"422", 422, nil, "", Permanent, 0},
		{"302 is not success", 302, map[string]string{"Location": "/elsewhere"}, "", Retry, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				for k, v := range c.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(c.status)
				_, _ = io.WriteString(w, c.body)
			}))
			defer srv.Close()
			p := NewPusher(PushOptions{URL: srv.URL, Timeout: time.Second, MaxResponseBytes: 1024}, nil)
			res := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false)
			if res.Verdict != c.want || res.RetryAfter != c.retryAfter || res.Status != c.status {
				t.Fatalf("got verdict %v retryAfter %v status %d (err %v); want %v %v %d", res.Verdict, res.RetryAfter, res.Status, res.Err, c.want, c.retryAfter, c.status)
			}
			if c.want != Success && res.Err == nil {
				t.Fatal("failure without an error text")
			}
		})
	}
}

func TestRetryAfterHTTPDate(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := parseRetryAfter(now.Add(90*time.Second).Format(http.TimeFormat), now); got != 90*time.Second {
		t.Fatalf("got %v", got)
	}
	if got := parseRetryAfter(now.Add(-time.Minute).Format(http.TimeFormat), now); got != 0 {
		t.Fatalf("past date: got %v", got)
	}
}

func TestPushTransportFailures(t *testing.T) {
	// Timeout: the app never answers in time.
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	p := NewPusher(PushOptions{URL: srv.URL, Timeout: 100 * time.Millisecond, MaxResponseBytes: 1024}, nil)
	res := p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false)
	if res.Verdict != Retry || res.Status != 0 || res.Err == nil {
		t.Fatalf("timeout: %+v", res)
	}

	// Connection refused: a port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p = NewPusher(PushOptions{URL: "http://" + addr + "/", Timeout: time.Second, MaxResponseBytes: 1024}, nil)
	res = p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false)
	if res.Verdict != Retry || res.Err == nil || !strings.Contains(res.Err.Error(), "refused") {
		t.Fatalf("refused: %+v", res)
	}

	// Garbage instead of HTTP.
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer gl.Close()
	go func() {
		for {
			c, err := gl.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("this is not http\r\n\r\n"))
			c.Close()
		}
	}()
	p = NewPusher(PushOptions{URL: "http://" + gl.Addr().String() + "/", Timeout: time.Second, MaxResponseBytes: 1024}, nil)
	res = p.Push(context.Background(), &adapters.Delivery{ID: "x"}, 1, false)
	if res.Verdict != Retry || res.Err == nil {
		t.Fatalf("garbage: %+v", res)
	}
}

func TestPushRefusesOversizedMessage(t *testing.T) {
	called := false
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true }))
	defer srv.Close()
	p := NewPusher(PushOptions{URL: srv.URL, Timeout: time.Second, MaxResponseBytes: 1024, MaxMessageBytes: 4}, nil)
	res := p.Push(context.Background(), &adapters.Delivery{ID: "x", Payload: []byte("12345")}, 1, false)
	if res.Verdict != Permanent || called || !strings.Contains(res.Err.Error(), "max_message_bytes") {
		t.Fatalf("got %+v called=%v", res, called)
	}
}

func TestBackoffFullJitterBounds(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2}
	for n, ceil := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 50: time.Second} {
		var maxSeen, sum time.Duration
		const samples = 4000
		for i := 0; i < samples; i++ {
			d := b.Delay(n)
			if d < 0 || d > ceil {
				t.Fatalf("Delay(%d) = %v outside [0, %v]", n, d, ceil)
			}
			maxSeen = max(maxSeen, d)
			sum += d
		}
		// Full jitter: uniform over [0, ceil], so the mean is near ceil/2 and the maximum
		// near ceil (these bounds fail with probability far below 1e-9).
		mean := sum / samples
		if mean < ceil*4/10 || mean > ceil*6/10 || maxSeen < ceil*9/10 {
			t.Fatalf("Delay(%d): mean %v max %v for ceiling %v: not full jitter", n, mean, maxSeen, ceil)
		}
	}
}
