//go:build e2e

package kafka

import (
	"os"
	"strings"
	"testing"

	"github.com/mqsidecar/mqsidecar/adapters/adaptertest"
)

// TestConformanceE2E runs the shared adapter suite against a real Kafka
// (MQSIDECAR_E2E_KAFKA=host:port, started by e2e/harness/kafka.sh).
func TestConformanceE2E(t *testing.T) {
	adaptertest.Run(t, harness(e2eBrokers(t)))
}

// e2eBrokers returns MQSIDECAR_E2E_KAFKA's brokers; without it the test is skipped (failed
// in CI).
func e2eBrokers(t *testing.T) []string {
	t.Helper()
	addr := os.Getenv("MQSIDECAR_E2E_KAFKA")
	if addr == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("MQSIDECAR_E2E_KAFKA is not set: the Kafka broker did not start (see e2e/harness/kafka.sh)")
		}
		t.Skip("MQSIDECAR_E2E_KAFKA not set; start one with e2e/harness/kafka.sh start")
	}
	return strings.Split(addr, ",")
}

// TestConformanceShareE2E runs the suite in share mode against the real Kafka (4.2, share
// groups enabled by e2e/harness/kafka.sh).
func TestConformanceShareE2E(t *testing.T) {
	adaptertest.Run(t, shareHarness(e2eBrokers(t)))
}
