//go:build e2e

package e2e

import (
	"testing"
	"time"
)

// TestRabbitMQE2EFleetKill: three consumers on one queue, each with its own embedded store,
// kill -9 spread over them, no producer duplicates: every message a killed consumer held
// comes back with RabbitMQ's redelivered flag, so nothing is pushed twice unflagged.
func TestRabbitMQE2EFleetKill(t *testing.T) {
	r := newRabbitE2E(t, "fleet-kill")
	runFleet(t, r, fleetScenario{
		label: "fleet kill-9 x3, bbolt", messages: 3000, keys: 64, failPerK: 50, kills: 3,
		appDelay: 500 * time.Microsecond,
	})
}

// TestRabbitMQE2EFleetSharedKill: the shared store, 10% producer duplicates (which RabbitMQ
// spreads over the consumers), kill -9 spread over them.
func TestRabbitMQE2EFleetSharedKill(t *testing.T) {
	r := newRabbitE2E(t, "fleet-skill")
	runFleet(t, r, fleetScenario{
		label: "fleet kill-9 x3, redis", messages: 3000, keys: 64, dupShare: 0.1, failPerK: 50, kills: 3,
		appDelay: 500 * time.Microsecond, sharedStore: true,
	})
}

// TestRabbitMQE2EFleetSharedRolling: the shared store, a rolling restart in which every
// replaced consumer starts with an empty local store.
func TestRabbitMQE2EFleetSharedRolling(t *testing.T) {
	r := newRabbitE2E(t, "fleet-sroll")
	runFleet(t, r, fleetScenario{
		label: "fleet rolling, redis", messages: 3000, keys: 64, dupShare: 0.1, failPerK: 50, rolling: true,
		appDelay: 500 * time.Microsecond, sharedStore: true,
	})
}

// TestRabbitMQE2EFleetSharedScale: the shared store, scaled 1 → 3 → 1 under load.
func TestRabbitMQE2EFleetSharedScale(t *testing.T) {
	r := newRabbitE2E(t, "fleet-scale")
	runFleet(t, r, fleetScenario{
		label: "fleet scale 1-3-1, redis", messages: 3000, keys: 64, dupShare: 0.1, failPerK: 50, scale: true,
		appDelay: 500 * time.Microsecond, sharedStore: true,
	})
}
