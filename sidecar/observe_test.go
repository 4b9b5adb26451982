package sidecar

import (
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/metrics"
)

// TestAppReadyHasOneWriter: mqsidecar_app_ready is 0 while either the health check fails or
// the pushes do not reach the app; a passing health check does not hide failing pushes, nor
// a reaching push a failing health check.
func TestAppReadyHasOneWriter(t *testing.T) {
	m := metrics.New()
	var a appState
	steps := []struct {
		name string
		do   func()
		want float64
	}{
		{"healthy", func() { a.health(m, true) }, 1},
		{"pushes fail", func() { a.reached(m, false) }, 0},
		{"health check passes while pushes fail", func() { a.health(m, true) }, 0},
		{"pushes reach the app", func() { a.reached(m, true) }, 1},
		{"health check fails", func() { a.health(m, false) }, 0},
		{"a push reaches the app while unhealthy", func() { a.reached(m, true) }, 0},
		{"healthy again", func() { a.health(m, true) }, 1},
	}
	for _, s := range steps {
		s.do()
		var d dto.Metric
		if err := m.AppReady.Write(&d); err != nil {
			t.Fatal(err)
		}
		if got := d.GetGauge().GetValue(); got != s.want {
			t.Fatalf("%s: app_ready %v, want %v", s.name, got, s.want)
		}
	}
}

func TestConfiguredTopics(t *testing.T) {
	c := config.Defaults()
	c.Source.Kafka.Topics = []string{"a", "b"}
	c.Source.RocketMQ.Topic = "r"
	c.Source.RabbitMQ.Queue = "q"
	for kind, want := range map[string]string{"kafka": "a,b", "rocketmq": "r", "rabbitmq": "q"} {
		c.Source.Kind = kind
		got := configuredTopics(c)
		s := ""
		for i, t := range got {
			if i > 0 {
				s += ","
			}
			s += t
		}
		if s != want {
			t.Errorf("%s: %q, want %q", kind, s, want)
		}
	}
}
