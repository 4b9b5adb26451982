package ackgate

import (
	"slices"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/metrics"
)

// otherTopic is the topic label of a delivery from a topic or queue the configuration does
// not name (none should come): the label stays bounded by the configuration.
const otherTopic = "other"

// topics hands out the delivery counters of a delivery's topic (or queue), read from its
// CloudEvents source. Used by the read loop only (admit), so its cache needs no lock.
type topics struct {
	m       *metrics.Metrics
	allowed []string // empty: any
	bySrc   map[string]*metrics.TopicCounters
}

func newTopics(allowed []string, m *metrics.Metrics) topics {
	for _, t := range allowed {
		m.Topic(t) // the series exist at 0 from the start
	}
	return topics{m: m, allowed: allowed, bySrc: map[string]*metrics.TopicCounters{}}
}

func (t topics) of(d *adapters.Delivery) *metrics.TopicCounters {
	if c, ok := t.bySrc[d.Source]; ok {
		return c
	}
	_, dest := splitSource(d.Source)
	if len(t.allowed) > 0 && !slices.Contains(t.allowed, dest) {
		dest = otherTopic
	}
	c := t.m.Topic(dest)
	if len(t.bySrc) < 1024 { // a bound for sources that name anything
		t.bySrc[d.Source] = c
	}
	return c
}
