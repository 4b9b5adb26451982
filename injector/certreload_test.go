package injector

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// testCert is a self-signed serving certificate for 127.0.0.1 and localhost.
type testCert struct {
	certPEM, keyPEM []byte
	x509            *x509.Certificate
}

func newTestCert(t *testing.T, cn string) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := x509.ParseCertificate(der)
	return testCert{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		x509:    parsed,
	}
}

// writeAtomic replaces path the way most tools do: write a temporary file, rename over.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// secretVolume mimics a kubelet Secret volume: tls.crt → ..data/tls.crt, ..data → a
// timestamped directory, swapped atomically on update.
type secretVolume struct {
	dir string
	gen int
}

func newSecretVolume(t *testing.T, c testCert) *secretVolume {
	v := &secretVolume{dir: t.TempDir()}
	v.update(t, c)
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(v.dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

func (v *secretVolume) update(t *testing.T, c testCert) {
	t.Helper()
	v.gen++
	ts := filepath.Join(v.dir, "..gen"+time.Now().Format("150405.000000000")+string(rune('a'+v.gen)))
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	for f, data := range map[string][]byte{"tls.crt": c.certPEM, "tls.key": c.keyPEM} {
		if err := os.WriteFile(filepath.Join(ts, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tmpLink := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmpLink); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmpLink, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

func (v *secretVolume) certFile() string { return filepath.Join(v.dir, "tls.crt") }
func (v *secretVolume) keyFile() string  { return filepath.Join(v.dir, "tls.key") }

// servedCert makes a real TLS handshake with get and returns the leaf the server presented.
func servedCert(t *testing.T, r *CertReloader) *x509.Certificate {
	t.Helper()
	srvConn, cliConn := net.Pipe()
	defer cliConn.Close()
	go func() {
		defer srvConn.Close()
		_ = tls.Server(srvConn, &tls.Config{GetCertificate: r.GetCertificate}).Handshake()
	}()
	c := tls.Client(cliConn, &tls.Config{InsecureSkipVerify: true}) // we inspect the cert ourselves
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return c.ConnectionState().PeerCertificates[0]
}

func TestCertReloaderPicksUpReplacedFiles(t *testing.T) {
	a, b, c := newTestCert(t, "cert-a"), newTestCert(t, "cert-b"), newTestCert(t, "cert-c")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeAtomic(t, certFile, a.certPEM)
	writeAtomic(t, keyFile, a.keyPEM)
	reg := prometheus.NewRegistry()
	r, err := NewCertReloader(certFile, keyFile, 0, nil, NewMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	if got := servedCert(t, r); !got.Equal(a.x509) {
		t.Fatalf("served %s, want cert-a", got.Subject.CommonName)
	}

	writeAtomic(t, certFile, b.certPEM)
	writeAtomic(t, keyFile, b.keyPEM)
	if got := servedCert(t, r); !got.Equal(b.x509) {
		t.Fatalf("after rotation served %s, want cert-b", got.Subject.CommonName)
	}

	// Half-written rotation (new cert, old key): keep serving B, count one failure.
	writeAtomic(t, certFile, c.certPEM)
	if got := servedCert(t, r); !got.Equal(b.x509) {
		t.Fatalf("with a mismatched pair served %s, want cert-b kept", got.Subject.CommonName)
	}
	if got := servedCert(t, r); !got.Equal(b.x509) { // the same failure is retried, not re-counted
		t.Fatalf("served %s, want cert-b kept", got.Subject.CommonName)
	}
	writeAtomic(t, keyFile, c.keyPEM)
	if got := servedCert(t, r); !got.Equal(c.x509) {
		t.Fatalf("after completing the rotation served %s, want cert-c", got.Subject.CommonName)
	}
	if n := counterSum(t, reg, "mqsidecar_injector_certificate_reloads_total", map[string]string{"result": "success"}); n != 2 {
		t.Errorf("successful reloads = %v, want 2", n)
	}
	if n := counterSum(t, reg, "mqsidecar_injector_certificate_reloads_total", map[string]string{"result": "failure"}); n != 1 {
		t.Errorf("failed reloads = %v, want 1", n)
	}
}

func TestCertReloaderFollowsSecretVolumeSymlinkSwap(t *testing.T) {
	a, b := newTestCert(t, "cert-a"), newTestCert(t, "cert-b")
	vol := newSecretVolume(t, a)
	r, err := NewCertReloader(vol.certFile(), vol.keyFile(), 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := servedCert(t, r); !got.Equal(a.x509) {
		t.Fatalf("served %s, want cert-a", got.Subject.CommonName)
	}
	vol.update(t, b)
	if got := servedCert(t, r); !got.Equal(b.x509) {
		t.Fatalf("after the ..data swap served %s, want cert-b", got.Subject.CommonName)
	}
}

func TestCertReloaderChecksAtMostOncePerInterval(t *testing.T) {
	a, b := newTestCert(t, "cert-a"), newTestCert(t, "cert-b")
	vol := newSecretVolume(t, a)
	r, err := NewCertReloader(vol.certFile(), vol.keyFile(), time.Hour, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	vol.update(t, b)
	if got := servedCert(t, r); !got.Equal(a.x509) {
		t.Fatalf("within the interval served %s, want the cached cert-a", got.Subject.CommonName)
	}
	r.mu.Lock()
	r.lastCheck = time.Now().Add(-2 * time.Hour) // the interval has passed
	r.mu.Unlock()
	if got := servedCert(t, r); !got.Equal(b.x509) {
		t.Fatalf("after the interval served %s, want cert-b", got.Subject.CommonName)
	}
}

func TestNewCertReloaderFailsOnBadFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewCertReloader(filepath.Join(dir, "nope.crt"), filepath.Join(dir, "nope.key"), 0, nil, nil); err == nil {
		t.Error("missing files accepted")
	}
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewCertReloader(garbage, garbage, 0, nil, nil); err == nil {
		t.Error("garbage accepted")
	}
}
