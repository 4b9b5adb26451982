//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"
)

// newKafkaE2E connects to the real Kafka in MQSIDECAR_E2E_KAFKA and creates a fresh topic.
func newKafkaE2E(t *testing.T, name string, partitions int32) *kafkaEnv {
	t.Helper()
	brokers := strings.Split(brokerEnv(t, "MQSIDECAR_E2E_KAFKA", "kafka.sh"), ",")
	topic := uniqueName("e2e-" + name)
	k := newKafkaEnv(t, "kafka", brokers, topic, topic+"-g")
	k.createTopic(partitions)
	return k
}

// TestKafkaE2EKillRestart: ~3000 keyed IDs plus ~10% producer duplicates on 8 partitions of
// a real Kafka, an app failing ~10% of first attempts, the sidecar killed with SIGKILL four
// times mid-stream and restarted.
func TestKafkaE2EKillRestart(t *testing.T) {
	k := newKafkaE2E(t, "kill", 8)
	runKillRestart(t, k, killScenario{
		messages: 3000, keys: 64, dupShare: 0.1, failPerK: 100, kills: 4,
		appDelay: 500 * time.Microsecond, timeout: 2 * time.Minute,
	})
}

// TestKafkaE2EBrokerRestart: the broker is stopped gracefully mid-stream and started again
// with its data once the sidecar reported not ready.
func TestKafkaE2EBrokerRestart(t *testing.T) {
	k := newKafkaE2E(t, "brestart", 8)
	runBrokerRestart(t, k, "broker stop/start", true, stopStart(t, "kafka.sh"))
}

// TestKafkaE2EBrokerCrash: the broker is killed with SIGKILL mid-stream and started again
// with its data (harness restart --hard). /readyz may or may not notice a short outage; the
// sidecar must recover and lose nothing.
func TestKafkaE2EBrokerCrash(t *testing.T) {
	k := newKafkaE2E(t, "bcrash", 8)
	runBrokerRestart(t, k, "broker kill-9/restart", false, func(*sidecarProc, func() string) {
		harnessVerb(t, "kafka.sh", "restart", "--hard")
	})
}

// TestKafkaE2EAppDown: the app refuses connections for 10 seconds mid-stream; committed
// offsets must not cover anything the app had not answered before the outage.
func TestKafkaE2EAppDown(t *testing.T) {
	k := newKafkaE2E(t, "appdown", 4)
	runAppDown(t, k, appRefuse, 10*time.Second)
}
