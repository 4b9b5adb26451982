package publish

import (
	"time"

	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// Settings configures the publish endpoint: the section publish of the configuration.
// Package config composes it into the file's shape and validates it with Check.
type Settings struct {
	// Listen is the endpoint's own listener (host:port, e.g. 127.0.0.1:3500); "" (the
	// default) means off: no listener, no producer.
	Listen string `mapstructure:"listen"`
	// MaxMessageBytes refuses a larger payload with 413 before anything is sent.
	MaxMessageBytes int `mapstructure:"max_message_bytes"`
	// Timeout bounds one publish from the request's arrival to the broker's confirmation
	// (Kafka: the record delivery timeout); past it the answer is 504, outcome unknown.
	Timeout time.Duration `mapstructure:"timeout"`
	// Transactions: POST /v1/transactions (txn.go, txn_settings.go).
	Transactions TxnSettings `mapstructure:"transactions"`
}

// Defaults returns the settings used for every key not set elsewhere.
func Defaults() Settings {
	return Settings{MaxMessageBytes: 1 << 20, Timeout: 10 * time.Second, Transactions: TxnDefaults()}
}

// Check adds the problems of the section to ck.
func (p Settings) Check(ck *settings.Checker) {
	if p.Listen == "" {
		return
	}
	if msg := settings.CheckHostPort(p.Listen, false); msg != "" {
		ck.Add("publish.listen", "%q: %s, or \"\" to disable the publish endpoint", p.Listen, msg)
	}
	if p.MaxMessageBytes < 1 {
		ck.Add("publish.max_message_bytes", "must be at least 1, got %d", p.MaxMessageBytes)
	}
	if p.Timeout < 100*time.Millisecond {
		ck.Add("publish.timeout", "must be at least 100ms, got %s", p.Timeout)
	}
	p.Transactions.Check(ck)
}
