package publish

import (
	"net/url"
	"time"

	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// TxnSettings configures transactions: the section publish.transactions (the publish
// endpoint's Settings carries it as Transactions).
type TxnSettings struct {
	// CheckURL is the app's check endpoint, asked COMMIT / ROLLBACK / UNKNOWN about a
	// prepared message that got no decision in time or survived a restart; "" = never ask
	// (undecided messages wait for the app's commit or rollback).
	CheckURL string `mapstructure:"check_url"`
	// Timeout is how long a prepared message waits for commit or rollback before the
	// check URL is asked.
	Timeout time.Duration `mapstructure:"timeout"`
	// MaxBackoff bounds the wait between asking again after UNKNOWN (1 s doubling).
	MaxBackoff time.Duration `mapstructure:"max_backoff"`
}

// TxnDefaults returns the section's defaults.
func TxnDefaults() TxnSettings {
	return TxnSettings{Timeout: 60 * time.Second, MaxBackoff: 60 * time.Second}
}

// Check adds the problems of the section to ck.
func (t TxnSettings) Check(ck *settings.Checker) {
	if t.CheckURL != "" {
		if u, err := url.Parse(t.CheckURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			ck.Add("publish.transactions.check_url", "%q is not an http(s) URL", settings.RedactURL(t.CheckURL))
		}
	}
	if t.Timeout < 100*time.Millisecond {
		ck.Add("publish.transactions.timeout", "must be at least 100ms, got %s", t.Timeout)
	}
	if t.MaxBackoff < time.Second {
		ck.Add("publish.transactions.max_backoff", "must be at least 1s, got %s", t.MaxBackoff)
	}
}

// Options returns the manager's options of these settings; the caller adds the store,
// the publisher and the logger.
func (t TxnSettings) Options() TxnOptions {
	return TxnOptions{CheckURL: t.CheckURL, Timeout: t.Timeout, MaxBackoff: t.MaxBackoff}
}
