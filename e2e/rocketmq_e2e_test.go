//go:build e2e

package e2e

import (
	"testing"
	"time"
)

// The RocketMQ chaos tests: the broker-neutral scenarios of scenario_test.go against the
// real RocketMQ 5.3 in MQSIDECAR_E2E_ROCKETMQ (name server; e2e/harness/rocketmq.sh start).
// The topic and the group's %RETRY% topic are created before the sidecar starts, so no
// client waits for a 30 s route refresh. "Everything consumed" is read from the broker: the
// group's consumer offsets at the end of every queue of the topic and of the retry topic.

// TestRocketMQE2EKillRestart: ~3000 keyed IDs plus ~10% producer duplicates (same
// message-id property) on 4 queues, concurrent mode, an app failing ~10% of first attempts,
// the sidecar killed with SIGKILL four times mid-stream and restarted.
func TestRocketMQE2EKillRestart(t *testing.T) {
	r := newRocketE2E(t, "kill", 4, "concurrent")
	runKillRestart(t, r, killScenario{
		messages: 3000, keys: 64, dupShare: 0.1, failPerK: 100, kills: 4,
		appDelay: 500 * time.Microsecond, timeout: 2 * time.Minute,
	})
	t.Logf("copies per queue: %s", r.queueSpread())
}

// TestRocketMQE2EBrokerRestart: the broker (not the name server) is stopped gracefully
// mid-stream and started again with its store (harness restart-broker); /readyz must turn
// false meanwhile and true again, and nothing is lost.
func TestRocketMQE2EBrokerRestart(t *testing.T) {
	r := newRocketE2E(t, "brestart", 4, "concurrent")
	runBrokerRestart(t, r, "broker restart", true, func(*sidecarProc, func() string) {
		harnessVerb(t, "rocketmq.sh", "restart-broker")
	})
}
