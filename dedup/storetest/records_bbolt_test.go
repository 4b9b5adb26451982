package storetest_test

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/dedup/storetest"
)

// TestBboltRecords runs the records cases against the embedded store.
func TestBboltRecords(t *testing.T) {
	storetest.RunRecords(t, func(t *testing.T) storetest.RecordStore {
		s, err := dedup.Open(filepath.Join(t.TempDir(), "dedup.db"), dedup.Options{
			TTL: storetest.TTL, Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}
