package ackgate

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// TestPushToHTTPSAppWithOwnCA: an https app whose certificate is signed by a CA the system
// does not know (httptest's self-signed one) is pushed to when PushOptions.TLS trusts that
// CA (app.tls.ca_file), and refused without it.
func TestPushToHTTPSAppWithOwnCA(t *testing.T) {
	app := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer app.Close()
	roots := x509.NewCertPool()
	roots.AddCert(app.Certificate())
	d := &adapters.Delivery{ID: "x", Payload: []byte("{}")}

	p := NewPusher(PushOptions{URL: app.URL + "/in", Timeout: 2 * time.Second, MaxResponseBytes: 1024,
		TLS: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}}, nil)
	defer p.Close()
	for i := range 3 {
		if r := p.Push(context.Background(), d, 1, false); r.Verdict != Success {
			t.Fatalf("push %d with the app's CA: %+v", i, r)
		}
	}

	untrusted := NewPusher(PushOptions{URL: app.URL + "/in", Timeout: 2 * time.Second, MaxResponseBytes: 1024}, nil)
	defer untrusted.Close()
	r := untrusted.Push(context.Background(), d, 1, false)
	if r.Verdict != Retry || r.Err == nil || !strings.Contains(r.Err.Error(), "certificate") {
		t.Fatalf("push without the app's CA: %+v, want a certificate failure", r)
	}
}
