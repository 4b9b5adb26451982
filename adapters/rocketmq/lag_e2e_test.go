//go:build e2e

package rocketmq

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
)

// lagEvents records the queue lags a source reports (adapters.QueueGauges).
type lagEvents struct {
	adapters.NoEvents
	mu   sync.Mutex
	last map[adapters.QueueID]int64
}

func (e *lagEvents) SetQueueDepth(string, adapters.QueueDepth) {}

func (e *lagEvents) SetQueueLag(lag map[adapters.QueueID]int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.last = lag
}

// awaitTopic waits until the last report holds exactly the queue IDs ids of topic with lags
// summing to want.
func (e *lagEvents) awaitTopic(t *testing.T, topic string, ids []int, want int64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		e.mu.Lock()
		var sum int64
		got := map[int]int64{}
		for q, n := range e.last {
			if q.Topic == topic {
				if q.Broker == "" {
					t.Fatalf("queue %+v without a broker name", q)
				}
				got[q.ID] = n
				sum += n
			}
		}
		e.mu.Unlock()
		ok := sum == want && len(got) == len(ids)
		for _, id := range ids {
			_, has := got[id]
			ok = ok && has
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lag of %s by queue id: %v (sum %d), want queues %v summing to %d", topic, got, sum, ids, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestQueueLagE2E: the source reports, per message queue it owns, the broker's max offset
// minus its consumer offset: 10 while ten messages are read and none settled, 0 once all are.
func TestQueueLagE2E(t *testing.T) {
	topic := fmt.Sprintf("mqsc-rmq-lag-%d", time.Now().UnixNano()%1e9)
	createTopic(t, topic, 2)
	produce(t, newProducer(t), topic, msgs("lag", 10, "")...)
	ev := &lagEvents{}
	s, err := New(sourceConfig(t, topic, "concurrent", "topic"), "", WithLogger(testLogger(t)), WithMaxInflight(16), WithEvents(ev))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	var ds []*adapters.Delivery
	for range 10 {
		ds = append(ds, read(t, s, 30*time.Second))
	}
	ev.awaitTopic(t, topic, []int{0, 1}, 10, 3*healthInterval)
	for _, d := range ds {
		d.Settle(nil)
	}
	ev.awaitTopic(t, topic, []int{0, 1}, 0, 3*healthInterval)
	closeSource(t, s)
}
