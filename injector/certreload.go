package injector

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// CertReloader serves a TLS key pair from two files and reloads it when they change, so a
// certificate rotated by cert-manager or an upgraded Secret is served without a restart.
//
// Kubernetes updates a mounted Secret by swapping a symlink, so the files are compared by
// identity (os.SameFile, which follows the symlink), size and modification time. The check
// runs inside GetCertificate, at most once per interval, so an idle webhook does no work. A
// pair that fails to load (say, the certificate was written but not yet the key) is logged
// and the previous pair keeps being served; the next check tries again.
//
// CertReloader is safe for concurrent use.
type CertReloader struct {
	certFile, keyFile string
	interval          time.Duration
	log               *slog.Logger
	metrics           *Metrics

	mu        sync.Mutex // guards the fields below
	cert      *tls.Certificate
	certStat  os.FileInfo
	keyStat   os.FileInfo
	lastCheck time.Time
	lastErr   string // last reload error logged, so a persisting failure is logged once
}

// NewCertReloader loads the pair once (an error here is fatal for the caller) and returns a
// reloader that re-checks the files at most every interval (0: on every handshake). log and
// metrics may be nil.
func NewCertReloader(certFile, keyFile string, interval time.Duration, log *slog.Logger, metrics *Metrics) (*CertReloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	r := &CertReloader{certFile: certFile, keyFile: keyFile, interval: interval, log: log, metrics: metrics}
	cs, ks, err := r.stat()
	if err != nil {
		return nil, err
	}
	if err := r.load(cs, ks); err != nil {
		return nil, err
	}
	r.lastCheck = time.Now()
	return r, nil
}

// GetCertificate is a tls.Config.GetCertificate callback.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.lastCheck) >= r.interval {
		r.lastCheck = now
		r.maybeReload()
	}
	return r.cert, nil
}

// maybeReload reloads the pair if a file changed.
//
// Lock should be held.
func (r *CertReloader) maybeReload() {
	cs, ks, err := r.stat()
	if err == nil && sameFile(cs, r.certStat) && sameFile(ks, r.keyStat) {
		return
	}
	if err == nil {
		err = r.load(cs, ks)
	}
	if err != nil {
		if msg := err.Error(); msg != r.lastErr {
			r.lastErr = msg
			r.metrics.certReloads.WithLabelValues("failure").Inc()
			r.log.Error("reloading the serving certificate failed; still serving the previous one", "err", err)
		}
		return
	}
	r.lastErr = ""
	r.metrics.certReloads.WithLabelValues("success").Inc()
	r.log.Info("reloaded the serving certificate", "not_after", r.cert.Leaf.NotAfter, "serial", r.cert.Leaf.SerialNumber.String())
}

func (r *CertReloader) stat() (os.FileInfo, os.FileInfo, error) {
	cs, err := os.Stat(r.certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("injector: tls certificate: %w", err)
	}
	ks, err := os.Stat(r.keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("injector: tls key: %w", err)
	}
	return cs, ks, nil
}

// load reads the pair and records the stats it was read under. The stats are taken before
// reading, so a write racing with the read is seen as a change at the next check.
//
// Lock should be held (or r not yet shared).
func (r *CertReloader) load(cs, ks os.FileInfo) error {
	pair, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("injector: loading key pair %s, %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.certStat, r.keyStat = &pair, cs, ks
	r.metrics.certNotAfter.Set(float64(pair.Leaf.NotAfter.Unix()))
	return nil
}

func sameFile(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
