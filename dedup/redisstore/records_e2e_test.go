//go:build e2e

package redisstore

import (
	"testing"

	"github.com/mqsidecar/mqsidecar/dedup/storetest"
)

// TestRecordsConformance runs the records cases against the harness Redis.
func TestRecordsConformance(t *testing.T) {
	addr := harnessRedis(t)
	storetest.RunRecords(t, func(t *testing.T) storetest.RecordStore {
		return newStore(t, addr, prefix(), func(o *Options) { o.TTL = storetest.TTL })
	})
}
