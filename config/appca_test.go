package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeTestCA writes a self-signed CA certificate (PEM) into dir and returns its path.
func writeTestCA(t *testing.T, dir string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "app-ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAppTLSClientConfig: app.tls.ca_file becomes the roots of the push's TLS; without it
// the system's roots are used (nil).
func TestAppTLSClientConfig(t *testing.T) {
	if c, err := (AppTLS{}).ClientConfig(); c != nil || err != nil {
		t.Fatalf("no ca_file: %v, %v; want nil, nil", c, err)
	}
	c, err := AppTLS{CAFile: writeTestCA(t, t.TempDir())}.ClientConfig()
	if err != nil || c == nil || c.RootCAs == nil {
		t.Fatalf("ca_file: %+v, %v", c, err)
	}
}
