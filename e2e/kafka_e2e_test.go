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

// TestKafkaE2EBrokerRestart: the broker is restarted (harness restart: controlled shutdown,
// start, data kept) mid-stream.
func TestKafkaE2EBrokerRestart(t *testing.T) {
	k := newKafkaE2E(t, "brestart", 8)
	runBrokerRestart(t, k, func() {
		if out, err := harness(t, 4*time.Minute, "kafka.sh", "restart"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	})
}

// TestKafkaE2EAppDown: the app refuses connections for 10 seconds mid-stream; committed
// offsets must not cover anything the app had not answered before the outage.
func TestKafkaE2EAppDown(t *testing.T) {
	k := newKafkaE2E(t, "appdown", 4)
	runAppDown(t, k, appRefuse, 10*time.Second)
}
