package config

import (
	"crypto/tls"

	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// ClientConfig builds the *tls.Config for an https app: nil (the system's roots) without
// app.tls.ca_file.
func (t AppTLS) ClientConfig() (*tls.Config, error) {
	if t.CAFile == "" {
		return nil, nil
	}
	pool, err := settings.ReadCAFile("app.tls.ca_file", t.CAFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}, nil
}
