package ackgate

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// FuzzPushHeaders: whatever a message carries — header names and values with CR, LF, NUL or
// any other byte, an ID, key or content type of any bytes, of any length — the push is one
// well-framed HTTP/1.1 request: net/http parses it, the body is the payload, the
// CloudEvents headers are there once each, and nothing from the message adds a header line
// of its own (no header injection). A forwarded header arrives with exactly its value.
// make test runs it briefly; run it longer by hand with -fuzztime.
func FuzzPushHeaders(f *testing.F) {
	f.Add("x-trace", "abc", "id-1", "key", "application/json")
	f.Add("x-evil", "a\r\nX-Injected: 1", "id\r\nX-Injected: 2", "k\nX-Injected: 3", "text/plain\r\nX-Injected: 4")
	f.Add("bad name", "v", "id\x00", "", "")
	f.Add("Content-Length", "0", "id", "", "")
	f.Add("ce-id", "forged", "id", "", "")
	f.Add("x-long", strings.Repeat("v", 9000), strings.Repeat("i", 300), "", "")
	p := NewPusher(PushOptions{URL: "http://127.0.0.1:1/push", EventType: "mqsidecar.message"}, nil)
	f.Fuzz(func(t *testing.T, name, value, id, key, contentType string) {
		d := &adapters.Delivery{
			ID: id, Key: key, ContentType: contentType, Source: "kafka://orders", Payload: []byte("body"),
			Headers: []adapters.Header{{Key: name, Value: value}},
		}
		var buf bytes.Buffer
		w := bufio.NewWriter(&buf)
		w.WriteString("POST /push HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\n")
		p.writeHeaders(context.Background(), w, d, 1, false)
		w.WriteString("\r\nbody")
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		req, err := http.ReadRequest(bufio.NewReader(&buf))
		if err != nil {
			t.Fatalf("the push does not parse: %v\n%q", err, buf.String())
		}
		body, err := io.ReadAll(req.Body)
		if err != nil || string(body) != "body" {
			t.Fatalf("body %q, %v: the framing was broken", body, err)
		}
		for _, h := range []string{"Ce-Specversion", "Ce-Id", "Ce-Source", "Ce-Type", "Ce-Deliveryattempt", "Content-Type"} {
			if n := len(req.Header.Values(h)); n != 1 {
				t.Fatalf("%s appears %d times, want once: %q", h, n, req.Header[h])
			}
		}
		if got := req.Header.Get("Ce-Type"); got != "mqsidecar.message" {
			t.Fatalf("Ce-Type %q: overridden by the message", got)
		}
		if got := req.Header.Get("Ce-Deliveryattempt"); got != "1" {
			t.Fatalf("Ce-Deliveryattempt %q: overridden by the message", got)
		}
		if validHeaderValue(id) {
			if got, want := req.Header.Get("Ce-Id"), strings.Trim(id, " \t"); got != want {
				t.Fatalf("Ce-Id %q, want %q", got, want)
			}
		}
		forwarded := http.CanonicalHeaderKey(name)
		for h, vs := range req.Header {
			switch {
			case h == "Host" || h == "Content-Length" || h == "Content-Type" || strings.HasPrefix(h, "Ce-"):
			case h == forwarded:
				if len(vs) != 1 || vs[0] != strings.Trim(value, " \t") {
					t.Fatalf("forwarded %s = %q, want %q", h, vs, value)
				}
			default:
				t.Fatalf("header %q = %q came from nowhere (injected by the message's bytes)", h, vs)
			}
		}
	})
}
