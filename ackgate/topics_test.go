package ackgate

import (
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// byTopic returns the series of a counter vector of the gate's metrics by topic label
// (mqsidecar_deliveries_total: "result/topic", labels sorted by name).
func byTopic(t *testing.T, g *Gate, name string) map[string]float64 {
	t.Helper()
	mfs, err := g.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[labels(m)] = m.GetCounter().GetValue()
		}
	}
	return out
}

func labels(m *dto.Metric) string {
	s := ""
	for i, l := range m.GetLabel() {
		if i > 0 {
			s += "/"
		}
		s += l.GetValue()
	}
	return s
}

// TestCountersByTopic: the delivery counters carry the topic (or queue) of each delivery,
// the configured ones exist at 0 from the start, and a destination the configuration does
// not name is counted as "other", so the label stays bounded by the configuration.
func TestCountersByTopic(t *testing.T) {
	_, url := newApp(t, nil)
	o := opts(url)
	o.Topics = []string{"orders", "payments", "idle"}
	src := newFakeSource()
	g, _ := start(t, src, openStore(t), o)
	for i, s := range []string{"kafka://orders", "kafka://orders", "kafka://payments", "rabbitmq://%2F/orders", "kafka://unknown"} {
		src.sendWith(&adapters.Delivery{ID: string(rune('a' + i)), Source: s})
	}
	waitFor(t, "5 settled", func() bool { return src.settledCount() == 5 })
	waitFor(t, "5 acknowledged", func() bool { return counter(g.m.Acked) == 5 })
	want := map[string]float64{"orders": 3, "payments": 1, "idle": 0, "other": 1}
	for _, name := range []string{"mqsidecar_messages_received_total", "mqsidecar_messages_acked_total"} {
		got := byTopic(t, g, name)
		if len(got) != len(want) {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s{topic=%q} = %v, want %v", name, k, got[k], v)
			}
		}
	}
	if d := byTopic(t, g, "mqsidecar_deliveries_total"); d["success/orders"] != 3 || d["retry/idle"] != 0 || len(d) != 16 {
		t.Errorf("mqsidecar_deliveries_total: %v, want 4 topics × 4 results, success/orders 3", d)
	}
}
