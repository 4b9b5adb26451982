//go:build e2e

package e2e

import (
	"testing"
	"time"
)

// kafkaFleet runs a fleet on k as a Deployment would: dynamic membership (replaced pods
// never come back), and a short session timeout so that a killed member's partitions move
// to the others within seconds, with the reserved high-water mark telling the new owner
// what to flag.
type kafkaFleet struct{ *kafkaEnv }

func (k kafkaFleet) sidecarYAML(appURL, dedupPath string) (string, []string) {
	return kafkaConfig{brokers: k.brokers, topic: k.topic, group: k.group, appURL: appURL, dedupPath: dedupPath}.yaml(), nil
}

func (k kafkaFleet) replicaEnv(string) []string {
	return []string{"MQSIDECAR_SOURCE_KAFKA_SESSION_TIMEOUT=6s"}
}

// TestKafkaE2EFleetKill: three replicas, each with its own embedded store, kill -9 spread
// over them; no producer duplicates (recognising those across replicas is the shared
// store's job). Every redelivery a new owner makes must be flagged.
func TestKafkaE2EFleetKill(t *testing.T) {
	k := newKafkaE2E(t, "fleet-kill", 6)
	runFleet(t, kafkaFleet{k}, fleetScenario{
		label: "fleet kill-9 x3, bbolt", messages: 3000, keys: 64, failPerK: 50, kills: 3,
		appDelay: 500 * time.Microsecond,
	})
}

// TestKafkaE2EFleetRolling: a rolling restart in which every replaced replica starts with an
// empty store.
func TestKafkaE2EFleetRolling(t *testing.T) {
	k := newKafkaE2E(t, "fleet-roll", 6)
	runFleet(t, kafkaFleet{k}, fleetScenario{
		label: "fleet rolling, bbolt", messages: 3000, keys: 64, failPerK: 50, rolling: true,
		appDelay: 500 * time.Microsecond,
	})
}

// TestKafkaE2EFleetSharedKill: the shared store, 10% producer duplicates, kill -9 spread over
// the replicas: no ID completed by one replica is pushed again by another, none is pushed
// by two at once.
func TestKafkaE2EFleetSharedKill(t *testing.T) {
	k := newKafkaE2E(t, "fleet-skill", 6)
	runFleet(t, kafkaFleet{k}, fleetScenario{
		label: "fleet kill-9 x3, redis", messages: 3000, keys: 64, dupShare: 0.1, failPerK: 50, kills: 3,
		appDelay: 500 * time.Microsecond, sharedStore: true,
	})
}

// TestKafkaE2EFleetSharedRolling: the shared store, 10% producer duplicates, a rolling
// restart in which every replaced replica starts with an empty local store.
func TestKafkaE2EFleetSharedRolling(t *testing.T) {
	k := newKafkaE2E(t, "fleet-sroll", 6)
	runFleet(t, kafkaFleet{k}, fleetScenario{
		label: "fleet rolling, redis", messages: 3000, keys: 64, dupShare: 0.1, failPerK: 50, rolling: true,
		appDelay: 500 * time.Microsecond, sharedStore: true,
	})
}

// TestKafkaE2EFleetSharedScale: the shared store, 10% producer duplicates, scaled 1 → 3 → 1
// under load.
func TestKafkaE2EFleetSharedScale(t *testing.T) {
	k := newKafkaE2E(t, "fleet-scale", 6)
	runFleet(t, kafkaFleet{k}, fleetScenario{
		label: "fleet scale 1-3-1, redis", messages: 3000, keys: 64, dupShare: 0.1, failPerK: 50, scale: true,
		appDelay: 500 * time.Microsecond, sharedStore: true,
	})
}
