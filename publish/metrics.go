package publish

import (
	"errors"
	"sync"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"

	"github.com/prometheus/client_golang/prometheus"
)

// serverMetrics are the endpoint's collectors: publishes by topic and outcome, and the
// latency of those that reached the publisher. No payload, key or ID is ever a label; a
// topic is one only once the request named a well-formed, existing one.
type serverMetrics struct {
	total    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// handles caches the children of total (by topic and outcome) and of duration (by
	// outcome, topic "\x00"), so that an answer costs no label hashing: label values
	// are bounded as the series are.
	handles sync.Map // handleKey → prometheus.Counter or prometheus.Observer
}

type handleKey struct{ topic, outcome string }

// histogramTopic marks the duration's handles in serverMetrics.handles (no topic has it).
const histogramTopic = "\x00"

func newServerMetrics(reg prometheus.Registerer) (*serverMetrics, error) {
	m := &serverMetrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqsidecar_publish_requests_total",
			Help: "Publish requests answered, by topic (exchange) and outcome: ok, replayed, too_large, bad_request, unknown_topic, in_flight, key_reused, unroutable, rejected, unavailable, outcome_unknown, store. The topic is empty for answers given before the topic was known to exist.",
		}, []string{"topic", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mqsidecar_publish_duration_seconds",
			Help:    "Time from a publish request's arrival to its answer (the broker's confirmation included), by outcome.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"outcome"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.total, m.duration} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// observe counts one answer; took = 0 for answers given before the publish started.
func (m *serverMetrics) observe(topic string, err error, replayed bool, took time.Duration) {
	outcome := Outcome(err)
	if replayed {
		outcome = "replayed"
	}
	if errors.Is(err, adapters.ErrUnknownTopic) || errors.Is(err, ErrBadRequest) || errors.Is(err, ErrTooLarge) || errors.Is(err, errClientGone) {
		topic = ""
	}
	m.counter(topic, outcome).Inc()
	if took > 0 {
		m.observer(outcome).Observe(took.Seconds())
	}
}

func (m *serverMetrics) counter(topic, outcome string) prometheus.Counter {
	k := handleKey{topic, outcome}
	if c, ok := m.handles.Load(k); ok {
		return c.(prometheus.Counter)
	}
	c, _ := m.handles.LoadOrStore(k, m.total.WithLabelValues(topic, outcome))
	return c.(prometheus.Counter)
}

func (m *serverMetrics) observer(outcome string) prometheus.Observer {
	k := handleKey{histogramTopic, outcome}
	if o, ok := m.handles.Load(k); ok {
		return o.(prometheus.Observer)
	}
	o, _ := m.handles.LoadOrStore(k, m.duration.WithLabelValues(outcome))
	return o.(prometheus.Observer)
}
