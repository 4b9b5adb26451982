package metrics

import (
	"strings"
	"testing"
)

func lagOf(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for labels, v := range series(t, m, "mqsidecar_consumer_lag") {
		out[strings.TrimPrefix(labels, "topic=")] = v
	}
	return out
}

// TestSetConsumerLagDropsTopicsNoLongerOwned: a topic missing from the next report (its
// partitions or queues went to another replica) loses its series instead of keeping the
// last value.
func TestSetConsumerLagDropsTopicsNoLongerOwned(t *testing.T) {
	m := New()
	m.SetConsumerLag(map[string]int64{"a": 5, "b": 7})
	if got := lagOf(t, m); len(got) != 2 || got["a"] != 5 || got["b"] != 7 {
		t.Fatalf("after the first report: %v", got)
	}
	m.SetConsumerLag(map[string]int64{"a": 3})
	if got := lagOf(t, m); len(got) != 1 || got["a"] != 3 {
		t.Fatalf("after losing b: %v, want only a=3", got)
	}
	m.SetConsumerLag(nil)
	if got := lagOf(t, m); len(got) != 0 {
		t.Fatalf("after losing everything: %v", got)
	}
	m.SetConsumerLag(map[string]int64{"b": 0})
	if got := lagOf(t, m); len(got) != 1 || got["b"] != 0 {
		t.Fatalf("after regaining b: %v", got)
	}
}
