package metrics

import (
	"strings"
	"testing"

	"github.com/mqsidecar/mqsidecar/adapters"
)

var _ adapters.QueueGauges = (*Metrics)(nil)

// series returns the series of the metric name as "label=value,..." → value.
func series(t *testing.T, m *Metrics, name string) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			var ls []string
			for _, l := range mt.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			out[strings.Join(ls, ",")] = mt.GetGauge().GetValue()
		}
	}
	return out
}

// TestSetQueueLagDropsQueuesNoLongerOwned: the lag series of a RocketMQ message queue that
// went to another replica disappear; the others are updated.
func TestSetQueueLagDropsQueuesNoLongerOwned(t *testing.T) {
	m := New()
	q := func(b string, id int) adapters.QueueID { return adapters.QueueID{Topic: "orders", Broker: b, ID: id} }
	m.SetQueueLag(map[adapters.QueueID]int64{q("b1", 0): 5, q("b1", 1): 7, q("b2", 0): 1})
	got := series(t, m, "mqsidecar_rocketmq_queue_lag")
	if len(got) != 3 || got["broker=b1,queue_id=1,topic=orders"] != 7 {
		t.Fatalf("after the first report: %v", got)
	}
	m.SetQueueLag(map[adapters.QueueID]int64{q("b1", 1): 2})
	got = series(t, m, "mqsidecar_rocketmq_queue_lag")
	if len(got) != 1 || got["broker=b1,queue_id=1,topic=orders"] != 2 {
		t.Fatalf("after losing two queues: %v, want only b1/1=2", got)
	}
	m.SetQueueLag(nil)
	if got := series(t, m, "mqsidecar_rocketmq_queue_lag"); len(got) != 0 {
		t.Fatalf("after losing everything: %v", got)
	}
}

// TestSetQueueDepth: ready and consumers always; unacked only while the report has it (the
// management API answered), never a stale value after it stopped answering.
func TestSetQueueDepth(t *testing.T) {
	m := New()
	m.SetQueueDepth("jobs", adapters.QueueDepth{Ready: 4, Unacked: 2, HasUnacked: true, Consumers: 3})
	got := series(t, m, "mqsidecar_rabbitmq_queue_messages")
	if len(got) != 2 || got["queue=jobs,state=ready"] != 4 || got["queue=jobs,state=unacked"] != 2 {
		t.Fatalf("messages: %v", got)
	}
	if c := series(t, m, "mqsidecar_rabbitmq_queue_consumers"); c["queue=jobs"] != 3 {
		t.Fatalf("consumers: %v", c)
	}
	m.SetQueueDepth("jobs", adapters.QueueDepth{Ready: 9, Consumers: 1})
	got = series(t, m, "mqsidecar_rabbitmq_queue_messages")
	if len(got) != 1 || got["queue=jobs,state=ready"] != 9 {
		t.Fatalf("messages without unacked: %v, want only ready=9", got)
	}
}
