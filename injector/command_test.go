package injector

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// startServer runs a Server on loopback port 0 with the key pair and returns it, a cancel
// function that asks it to stop, and wait, which returns Run's error (idempotent).
func startServer(t *testing.T, certFile, keyFile string, shutdownDelay time.Duration) (*Server, context.CancelFunc, func() error) {
	t.Helper()
	srv, err := NewServer(ServerConfig{
		Listen:        "127.0.0.1:0",
		MetricsListen: "127.0.0.1:0",
		CertFile:      certFile,
		KeyFile:       keyFile,
		ShutdownDelay: shutdownDelay,
		// CertCheckInterval 0: the files are checked on every handshake.
		Injector: testOptions(),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	wait := sync.OnceValue(func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(15 * time.Second):
			return errors.New("server did not stop within 15s")
		}
	})
	t.Cleanup(func() {
		cancel()
		if err := wait(); err != nil {
			t.Error(err)
		}
	})
	return srv, cancel, wait
}

// httpsClient trusts only ca.
func httpsClient(ca *x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool},
			DisableKeepAlives: true, // every request is a fresh handshake
		},
	}
}

// TestServerServesAndRotatesCertificate: write cert A, connect, replace the files with
// cert B, connect again and see B — through the real server and a verifying client.
func TestServerServesAndRotatesCertificate(t *testing.T) {
	a, b := newTestCert(t, "cert-a"), newTestCert(t, "cert-b")
	vol := newSecretVolume(t, a)
	srv, _, _ := startServer(t, vol.certFile(), vol.keyFile(), 0)
	url := "https://" + srv.WebhookAddr().String() + "/mutate"

	review, err := os.ReadFile("testdata/pod-native-default.in.json")
	if err != nil {
		t.Fatal(err)
	}
	postReview := func(c *http.Client) (*http.Response, error) {
		return c.Post(url, "application/json", bytes.NewReader(review))
	}
	resp, err := postReview(httpsClient(a.x509))
	if err != nil {
		t.Fatalf("with cert A: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"patchType":"JSONPatch"`) {
		t.Fatalf("status %d body %s", resp.StatusCode, body)
	}
	if got := resp.TLS.PeerCertificates[0]; !got.Equal(a.x509) {
		t.Fatalf("served %s, want cert-a", got.Subject.CommonName)
	}

	vol.update(t, b)
	resp, err = postReview(httpsClient(b.x509))
	if err != nil {
		t.Fatalf("after rotating to cert B, a client trusting only B failed: %v", err)
	}
	resp.Body.Close()
	if got := resp.TLS.PeerCertificates[0]; !got.Equal(b.x509) {
		t.Fatalf("served %s, want cert-b", got.Subject.CommonName)
	}
	if _, err := postReview(httpsClient(a.x509)); err == nil {
		t.Error("a client trusting only the old cert A still connected")
	}

	// The metrics listener reports what happened.
	mresp, err := http.Get("http://" + srv.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`mqsidecar_injector_admissions_total{kind="Pod",result="injected"} 2`,
		`mqsidecar_injector_certificate_reloads_total{result="success"} 1`,
		`mqsidecar_injector_certificate_expiry_timestamp_seconds`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestServerDrainsOnStop: after cancel, /readyz fails during the shutdown delay while the
// webhook still answers, then Run returns nil.
func TestServerDrainsOnStop(t *testing.T) {
	a := newTestCert(t, "cert-a")
	vol := newSecretVolume(t, a)
	srv, cancel, wait := startServer(t, vol.certFile(), vol.keyFile(), 2*time.Second)
	readyz := "http://" + srv.MetricsAddr().String() + "/readyz"
	status := func() int {
		resp, err := http.Get(readyz)
		if err != nil {
			return -1
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := status(); s != http.StatusOK {
		t.Fatalf("/readyz = %d before stop", s)
	}
	cancel()
	deadline := time.Now().Add(2 * time.Second)
	for status() != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("/readyz did not fail after stop")
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
	review, _ := os.ReadFile("testdata/pod-native-default.in.json")
	resp, err := httpsClient(a.x509).Post("https://"+srv.WebhookAddr().String()+"/mutate", "application/json", bytes.NewReader(review))
	if err != nil {
		t.Fatalf("webhook must keep answering during the shutdown delay: %v", err)
	}
	resp.Body.Close()
	if err := wait(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
}

func TestCommandFlagsAndValidation(t *testing.T) {
	a := newTestCert(t, "cert-a")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeAtomic(t, certFile, a.certPEM)
	writeAtomic(t, keyFile, a.keyPEM)
	base := []string{"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--listen", "127.0.0.1:0",
		"--metrics-listen", "", "--shutdown-delay", "0s", "--log-level", "error"}

	cmd := NewCommand()
	if cmd.Name() != "mqsidecar-injector" {
		t.Errorf("command name = %q", cmd.Name())
	}
	for _, f := range []string{"listen", "tls-cert-file", "tls-key-file", "sidecar-image", "sidecar-mode", "metrics-listen",
		"wait-for-ready", "min-termination-grace-period", "sidecar-memory-limit", "admin-port", "cert-check-interval",
		"sidecar-secret-env", "sidecar-secret-env-from", "sidecar-secret-volumes"} {
		if cmd.Flags().Lookup(f) == nil {
			t.Errorf("missing flag --%s", f)
		}
	}

	bad := map[string][]string{
		"sidecar image":       {},
		"sidecar mode":        {"--sidecar-image", "x:1", "--sidecar-mode", "sideways"},
		"--log-level":         {"--sidecar-image", "x:1", "--log-level", "loud"},
		"--sidecar-cpu-limit": {"--sidecar-image", "x:1", "--sidecar-cpu-limit", "lots"},
		"--admin-port":        {"--sidecar-image", "x:1", "--admin-port", "0"},
		"tls key":             {"--sidecar-image", "x:1", "--tls-key-file", filepath.Join(dir, "missing.key")},
		`sidecar secret env: "PASSWORD=redis" is not NAME=SECRET/KEY`:       {"--sidecar-image", "x:1", "--sidecar-secret-env", "PASSWORD=redis"},
		`sidecar secret env from: "Kafka_Creds" is not a valid Secret name`: {"--sidecar-image", "x:1", "--sidecar-secret-env-from", "Kafka_Creds"},
		`sidecar secret volumes: "tls" is listed twice`:                     {"--sidecar-image", "x:1", "--sidecar-secret-volumes", "tls,tls"},
	}
	for want, extra := range bad {
		cmd := NewCommand()
		cmd.SetArgs(append(append([]string{}, base...), extra...))
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		err := cmd.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("args %q: error %v, want one mentioning %q", extra, err, want)
		}
		if want != "tls key" && !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("args %q: error %v is not ErrInvalidOptions", extra, err)
		}
	}

	// A valid command line starts and stops cleanly when its context ends.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cmd = NewCommand()
	cmd.SetArgs(append(base, "--sidecar-image", "ghcr.io/mqsidecar/mqsidecar:1.0.0",
		"--sidecar-secret-env", "MQSIDECAR_SOURCE_KAFKA_SASL_PASSWORD=kafka/password", "--sidecar-secret-env-from", "mqsidecar-env",
		"--sidecar-secret-volumes", "kafka-tls,redis-tls"))
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Errorf("valid command: %v", err)
	}
}
