//go:build e2e

package rabbitmq

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
	"github.com/mqsidecar/mqsidecar/internal/settings"
)

// depthEvents records the queue depths a source reports (adapters.QueueGauges).
type depthEvents struct {
	adapters.NoEvents
	mu   sync.Mutex
	last map[string]adapters.QueueDepth
}

func (e *depthEvents) SetQueueDepth(queue string, d adapters.QueueDepth) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.last == nil {
		e.last = map[string]adapters.QueueDepth{}
	}
	e.last[queue] = d
}

func (e *depthEvents) SetQueueLag(map[adapters.QueueID]int64) {}

// await waits until the last depth reported of queue is want.
func (e *depthEvents) await(t *testing.T, queue string, want adapters.QueueDepth, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		e.mu.Lock()
		got, ok := e.last[queue]
		e.mu.Unlock()
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue depth of %s: last reported %+v (reported: %v), want %+v", queue, got, ok, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// depthSource starts a source on queue (prefetch 2) that reports its queue depth every
// 100 ms to the returned events; mgmt is the management API's URL ("" for none).
func depthSource(t *testing.T, amqpURL, mgmt, queue string) (*Source, *depthEvents) {
	t.Helper()
	cfg := Defaults()
	cfg.URL = settings.Secret(amqpURL)
	cfg.Queue = queue
	cfg.Prefetch = 2
	cfg.ManagementURL = mgmt
	ev := &depthEvents{}
	log, logs := testLogger(t)
	s, err := New(cfg, "", WithLogger(log), WithEvents(ev), withDepthInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Close(ctx)
		if t.Failed() {
			t.Logf("source logs:\n%s", logs.String())
		}
	})
	return s, ev
}

// checkDepth publishes 5 messages to a fresh queue, consumes with prefetch 2 and checks the
// reported depth: 3 ready (and, from the management API, 2 unacked) and 1 consumer while
// nothing is acknowledged; 0 and 0 once all 5 are.
func checkDepth(t *testing.T, amqpURL, mgmt string, wait time.Duration) {
	a := newAdminURL(t, amqpURL)
	q := uniqueName(t)
	a.queue(q, nil)
	a.publish(q, msgs("depth", 5)...)
	src, ev := depthSource(t, amqpURL, mgmt, q)
	first := readOne(t, src, 10*time.Second)
	want := adapters.QueueDepth{Ready: 3, Consumers: 1}
	if mgmt != "" {
		want.Unacked, want.HasUnacked = 2, true
	}
	ev.await(t, q, want, wait)
	first.Settle(nil)
	for range 4 {
		readOne(t, src, 10*time.Second).Settle(nil)
	}
	want.Ready, want.Unacked = 0, 0
	ev.await(t, q, want, wait)
}

// TestQueueDepthE2E: without the management API, ready messages and consumers come from a
// passive queue.declare on the source's connection.
func TestQueueDepthE2E(t *testing.T) {
	checkDepth(t, brokerURL(t), "", 10*time.Second)
}

// TestQueueDepthManagementE2E: with source.rabbitmq.management_url, the unacknowledged
// messages too (the broker's statistics are refreshed every few seconds). Needs a node with
// the management plugin: MQSIDECAR_E2E_RABBITMQ_MGMT_AMQP and MQSIDECAR_E2E_RABBITMQ_MGMT
// (e2e/harness/doctor/shapes.sh env).
func TestQueueDepthManagementE2E(t *testing.T) {
	amqpURL, mgmt := os.Getenv("MQSIDECAR_E2E_RABBITMQ_MGMT_AMQP"), os.Getenv("MQSIDECAR_E2E_RABBITMQ_MGMT")
	if amqpURL == "" || mgmt == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("MQSIDECAR_E2E_RABBITMQ_MGMT_AMQP and MQSIDECAR_E2E_RABBITMQ_MGMT must be set in CI (doctor/shapes.sh env)")
		}
		t.Skip("no RabbitMQ with the management plugin (MQSIDECAR_E2E_RABBITMQ_MGMT_AMQP, MQSIDECAR_E2E_RABBITMQ_MGMT)")
	}
	checkDepth(t, amqpURL, mgmt, 45*time.Second)
}
