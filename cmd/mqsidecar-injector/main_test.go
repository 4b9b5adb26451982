package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/mqsidecar/mqsidecar/injector"
)

// writeKeyPair writes a self-signed serving key pair and returns the file names.
func writeKeyPair(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "injector-test"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestRootIsTheInjectCommand: the binary's root command is the webhook server itself, with
// every flag of injector.NewCommand (the flags `mqsidecar inject` had), plus `version`.
func TestRootIsTheInjectCommand(t *testing.T) {
	root := rootCommand(&bytes.Buffer{}, &bytes.Buffer{})
	if root.Name() != "mqsidecar-injector" {
		t.Errorf("root command name = %q", root.Name())
	}
	if root.RunE == nil {
		t.Error("the root command must run the webhook server")
	}
	names := func(fs *pflag.FlagSet) []string {
		var n []string
		fs.VisitAll(func(f *pflag.Flag) { n = append(n, f.Name) })
		return n
	}
	if got, want := names(root.Flags()), names(injector.NewCommand().Flags()); !slices.Equal(got, want) {
		t.Errorf("flags = %v, want the inject command's %v", got, want)
	}
	var subs []string
	for _, c := range root.Commands() {
		subs = append(subs, c.Name())
	}
	if !slices.Equal(subs, []string{"version"}) {
		t.Errorf("subcommands = %v, want [version]", subs)
	}
}

func TestVersion(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = "v1.2.3-test"
	var stdout, stderr bytes.Buffer
	if code := run([]string{"version"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr %s", code, stderr.String())
	}
	if got := stdout.String(); got != "mqsidecar-injector v1.2.3-test\n" {
		t.Errorf("version printed %q", got)
	}
}

// TestExitStatus: 2 for bad flags and invalid options, 1 for runtime failures, as the
// sidecar binary does; the message is on stderr, prefixed with the command name.
func TestExitStatus(t *testing.T) {
	certFile, keyFile := writeKeyPair(t)
	base := []string{"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--listen", "127.0.0.1:0",
		"--metrics-listen", "", "--shutdown-delay", "0s", "--log-level", "error", "--sidecar-image", "x:1"}
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown flag", []string{"--bogus"}, 2, "unknown flag: --bogus"},
		{"bad flag value", append(slices.Clone(base), "--shutdown-delay", "soon"), 2, "--shutdown-delay"},
		{"no sidecar image", []string{"--tls-cert-file", certFile, "--tls-key-file", keyFile}, 2, "sidecar image"},
		{"bad sidecar mode", append(slices.Clone(base), "--sidecar-mode", "sideways"), 2, "sidecar mode"},
		{"bad admin port", append(slices.Clone(base), "--admin-port", "0"), 2, "--admin-port"},
		{"bad log format", append(slices.Clone(base), "--log-format", "xml"), 2, "--log-format"},
		{"missing key file", append(slices.Clone(base), "--tls-key-file", filepath.Join(t.TempDir(), "missing.key")), 1, "missing.key"},
		{"bad listen address", append(slices.Clone(base), "--listen", "256.0.0.1:1"), 1, "listen"},
		{"unexpected argument", []string{"serve"}, 1, `unknown command "serve"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, stderr.String())
			}
			if msg := stderr.String(); !strings.HasPrefix(msg, "mqsidecar-injector: ") || !strings.Contains(msg, tc.msg) {
				t.Errorf("stderr %q, want a line naming %q", msg, tc.msg)
			}
		})
	}
}

// TestServesUntilCancelled: a valid command line (the chart's kind) starts the server, and
// it stops cleanly when its context ends.
func TestServesUntilCancelled(t *testing.T) {
	certFile, keyFile := writeKeyPair(t)
	root := rootCommand(&bytes.Buffer{}, &bytes.Buffer{})
	root.SetArgs([]string{"--tls-cert-file=" + certFile, "--tls-key-file=" + keyFile, "--listen=127.0.0.1:0",
		"--metrics-listen=127.0.0.1:0", "--shutdown-delay=0s", "--log-level=error",
		"--sidecar-image=ghcr.io/mqsidecar/mqsidecar:1.0.0", "--sidecar-mode=container", "--dedup-pvc-size=2Gi"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("valid command line: %v", err)
	}
}
