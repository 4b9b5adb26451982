package storetest_test

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/dedup/storetest"
)

// TestBbolt runs the conformance suite against the embedded store.
func TestBbolt(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		s, err := dedup.Open(filepath.Join(t.TempDir(), "dedup.db"), dedup.Options{
			TTL: storetest.TTL, Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

// TestBboltOutbox runs the outbox suite against the embedded store.
func TestBboltOutbox(t *testing.T) {
	storetest.RunOutbox(t, func(t *testing.T) storetest.OutboxStore {
		s, err := dedup.Open(filepath.Join(t.TempDir(), "dedup.db"), dedup.Options{
			TTL: storetest.TTL, Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}
