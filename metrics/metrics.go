// Package metrics defines every Prometheus metric the sidecar exports, in one place, so the
// names the Grafana dashboard (charts/mqsidecar) relies on are easy to audit.
//
// Labels never carry message IDs, offsets or keys: their cardinality is unbounded. The
// topic label of the delivery counters (Topic) is a topic or queue the configuration names.
// Each sidecar instance owns its registry (New), so tests and the demo can run several in
// one process.
//
// One writer per metric: each collector is written from one place in the program (a test,
// TestOneWriterPerMetric, reads the sources to hold this), so what a series means never
// depends on which of two writers spoke last.
package metrics

import (
	"runtime"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// Push results, the values of the result label of mqsidecar_deliveries_total.
const (
	ResultSuccess   = "success"   // 2xx (or Dapr SUCCESS)
	ResultRetry     = "retry"     // transient failure: 5xx, 408, 429, timeout, refused, Dapr RETRY
	ResultPermanent = "permanent" // other 4xx, or a message the sidecar refuses to push
	ResultDrop      = "drop"      // Dapr DROP: the app chose to drop the message
)

// Metrics holds the sidecar's collectors.
type Metrics struct {
	Registry *prometheus.Registry

	// The delivery counters, by topic (Kafka, RocketMQ) or queue (RabbitMQ); Deliveries also
	// by result. Count through Topic's handles.
	Received     *prometheus.CounterVec
	Deliveries   *prometheus.CounterVec
	Acked        *prometheus.CounterVec
	Retried      *prometheus.CounterVec
	Deduplicated *prometheus.CounterVec
	DeadLettered *prometheus.CounterVec
	Dropped      *prometheus.CounterVec
	Abandoned    *prometheus.CounterVec

	PushDuration prometheus.Histogram
	Inflight     prometheus.Gauge
	ParkedLanes  prometheus.Gauge
	OldestParked prometheus.Gauge
	ConsumerLag  *prometheus.GaugeVec
	// What the broker reports of the queues consumed (adapters.QueueGauges): a RabbitMQ
	// queue's messages by state (ready, and unacked when the management API is configured)
	// and its consumers; the lag of each RocketMQ message queue this replica owns.
	QueueMessages  *prometheus.GaugeVec
	QueueConsumers *prometheus.GaugeVec
	QueueLag       *prometheus.GaugeVec
	SourceReady    prometheus.Gauge
	AppReady       prometheus.Gauge
	DedupCommit    prometheus.Histogram
	DedupEntries   prometheus.Gauge
	InvalidHeaders prometheus.Counter
	Errors         *prometheus.CounterVec
	// BrokerDurability is 1 when a durability check (package durability) of a target the
	// configuration names is ok, 0 when it is at risk or unknown.
	BrokerDurability *prometheus.GaugeVec
	// BuildInfo is 1, labelled with the build's version and Go version (SetBuildInfo).
	BuildInfo *prometheus.GaugeVec
}

// TopicCounters are the delivery counters of one topic or queue.
type TopicCounters struct {
	Received, Acked, Retried, Deduplicated, DeadLettered, Dropped, Abandoned prometheus.Counter
	// Deliveries by result: ResultSuccess, ResultRetry, ResultPermanent, ResultDrop.
	Deliveries   map[string]prometheus.Counter
	pushDuration prometheus.Histogram
}

// Delivery counts one push result.
func (t *TopicCounters) Delivery(result string, seconds float64) {
	t.Deliveries[result].Inc()
	t.pushDuration.Observe(seconds)
}

// Topic returns the delivery counters of topic (a topic or queue the configuration names),
// creating its series at 0 if they do not exist. Keep the handles: counting through them
// costs no label lookup (the gate keeps them by source).
func (m *Metrics) Topic(topic string) *TopicCounters {
	t := &TopicCounters{
		Received: m.Received.WithLabelValues(topic), Acked: m.Acked.WithLabelValues(topic),
		Retried: m.Retried.WithLabelValues(topic), Deduplicated: m.Deduplicated.WithLabelValues(topic),
		DeadLettered: m.DeadLettered.WithLabelValues(topic), Dropped: m.Dropped.WithLabelValues(topic),
		Abandoned:    m.Abandoned.WithLabelValues(topic),
		Deliveries:   map[string]prometheus.Counter{},
		pushDuration: m.PushDuration,
	}
	for _, res := range []string{ResultSuccess, ResultRetry, ResultPermanent, ResultDrop} {
		t.Deliveries[res] = m.Deliveries.WithLabelValues(topic, res)
	}
	return t
}

// SetBuildInfo sets mqsidecar_build_info{version, goversion} to 1.
func (m *Metrics) SetBuildInfo(version string) {
	m.BuildInfo.Reset()
	m.BuildInfo.WithLabelValues(version, runtime.Version()).Set(1)
}

// New creates the collectors on a fresh registry that also carries the Go and process
// collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		r.MustRegister(c)
		return c
	}
	byTopic := func(name, help string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"topic"})
		r.MustRegister(c)
		return c
	}
	g := func(name, help string) prometheus.Gauge {
		c := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
		r.MustRegister(c)
		return c
	}
	m := &Metrics{
		Registry:     r,
		Received:     byTopic("mqsidecar_messages_received_total", "Messages read from the broker, by topic (or queue)."),
		Acked:        byTopic("mqsidecar_messages_acked_total", "Messages acknowledged to the broker (delivered, duplicate, dead-lettered or dropped), by topic (or queue)."),
		Retried:      byTopic("mqsidecar_messages_retried_total", "Retries scheduled after a failed push, by topic (or queue)."),
		Deduplicated: byTopic("mqsidecar_messages_deduplicated_total", "Messages settled without a push because their ID was already completed, by topic (or queue)."),
		DeadLettered: byTopic("mqsidecar_messages_dead_lettered_total", "Messages written to the dead-letter target (broker-confirmed), by topic (or queue)."),
		Dropped:      byTopic("mqsidecar_messages_dropped_total", "Messages acknowledged without success: the app answered DROP, or max attempts with drop_after_max_attempts; by topic (or queue)."),
		Abandoned:    byTopic("mqsidecar_messages_abandoned_total", "Messages left unacknowledged at shutdown or on a lost partition, by topic (or queue); the broker redelivers them."),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqsidecar_build_info", Help: "Always 1; the labels name the sidecar's version and the Go version it was built with.",
		}, []string{"version", "goversion"}),
		Inflight:     g("mqsidecar_inflight_messages", "Messages admitted (read, not yet settled): at most 4×delivery.max_inflight, of which at most max_inflight are being pushed."),
		ParkedLanes:  g("mqsidecar_parked_lanes", "Messages waiting for a retry; each blocks its ordering lane (partition, key) and no other."),
		OldestParked: g("mqsidecar_parked_oldest_seconds", "How long the longest-failing parked message has been retried."),
		SourceReady:  g("mqsidecar_source_ready", "1 when the broker connection is up."),
		AppReady:     g("mqsidecar_app_ready", "1 when the app's health endpoint (or its last push) succeeded."),
		DedupEntries: g("mqsidecar_dedup_entries", "IDs recorded in the dedup store (approximate)."),
		InvalidHeaders: f("mqsidecar_invalid_headers_total",
			"Message headers not forwarded because their name or value is not valid HTTP, or reserved."),
		Deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqsidecar_deliveries_total", Help: "Push attempts to the app, by topic (or queue) and result.",
		}, []string{"topic", "result"}),
		ConsumerLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqsidecar_consumer_lag", Help: "Messages behind the head of the topic (high watermark minus committed offset), over the partitions or queues this replica owns.",
		}, []string{"topic"}),
		QueueMessages: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqsidecar_rabbitmq_queue_messages", Help: "Messages in the consumed RabbitMQ queue, by state: ready (for delivery), unacked (delivered to any consumer, not yet acknowledged; only with source.rabbitmq.management_url).",
		}, []string{"queue", "state"}),
		QueueConsumers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqsidecar_rabbitmq_queue_consumers", Help: "Consumers subscribed to the consumed RabbitMQ queue (every replica's), as the broker reports it.",
		}, []string{"queue"}),
		QueueLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqsidecar_rocketmq_queue_lag", Help: "Messages behind the head of each RocketMQ message queue this replica owns (broker max offset minus consumer offset).",
		}, []string{"topic", "broker", "queue_id"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mqsidecar_errors_total", Help: "Runtime errors by kind (app, broker, store, dead_letter, commit).",
		}, []string{"kind"}),
		BrokerDurability: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mqsidecar_broker_durability",
			Help: "1 when the broker durability check (replication_factor, min_insync_replicas, queue_type, flush_disk_type, ...) of a configured topic, queue or broker is ok; 0 when it is at risk or unknown (mqsidecar doctor shows why and the fix).",
		}, []string{"check", "target"}),
		PushDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mqsidecar_push_duration_seconds", Help: "Duration of one HTTP push to the app.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
		}),
		DedupCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mqsidecar_dedup_commit_duration_seconds", Help: "Duration of one dedup store group commit (including fsync).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}),
	}
	r.MustRegister(m.Deliveries, m.ConsumerLag, m.QueueMessages, m.QueueConsumers, m.QueueLag, m.Errors, m.PushDuration, m.DedupCommit, m.BrokerDurability, m.BuildInfo)
	m.SetBuildInfo("unknown")
	return m
}

// Error counts one runtime error of the given kind.
func (m *Metrics) Error(kind string) {
	m.Errors.WithLabelValues(kind).Inc()
}

// SetConsumerLag sets mqsidecar_consumer_lag to lag, the lag by topic of the partitions
// (queues) this replica owns now, and deletes the series of every topic it exported before
// and owns no partition of any more. A replica that lost a topic in a rebalance must not
// keep exporting its last value: dashboards sum the series of a fleet, and the new owner
// exports the same lag. Update ConsumerLag only through this method.
func (m *Metrics) SetConsumerLag(lag map[string]int64) {
	lagMu.Lock()
	defer lagMu.Unlock()
	ch := make(chan prometheus.Metric)
	go func() { m.ConsumerLag.Collect(ch); close(ch) }()
	var gone []string
	for pm := range ch {
		var d dto.Metric
		if pm.Write(&d) != nil {
			continue
		}
		for _, l := range d.GetLabel() {
			if _, ok := lag[l.GetValue()]; l.GetName() == "topic" && !ok {
				gone = append(gone, l.GetValue())
			}
		}
	}
	for _, topic := range gone {
		m.ConsumerLag.DeleteLabelValues(topic)
	}
	for topic, n := range lag {
		m.ConsumerLag.WithLabelValues(topic).Set(float64(n))
	}
}

// lagMu serializes SetConsumerLag, which a source may call from its lag ticker and from a
// rebalance at once. (A package variable, not a field: Metrics holds collectors only.) A
// caller that takes its snapshot under a lock of its own should call SetConsumerLag under
// that lock too, so that an older snapshot never lands after a newer one.
var lagMu sync.Mutex

// SetQueueDepth implements adapters.QueueGauges: mqsidecar_rabbitmq_queue_messages and
// mqsidecar_rabbitmq_queue_consumers of queue. Without an unacked count its series is
// deleted rather than left at an old value.
func (m *Metrics) SetQueueDepth(queue string, d adapters.QueueDepth) {
	m.QueueMessages.WithLabelValues(queue, "ready").Set(float64(d.Ready))
	if d.HasUnacked {
		m.QueueMessages.WithLabelValues(queue, "unacked").Set(float64(d.Unacked))
	} else {
		m.QueueMessages.DeleteLabelValues(queue, "unacked")
	}
	m.QueueConsumers.WithLabelValues(queue).Set(float64(d.Consumers))
}

// SetQueueLag implements adapters.QueueGauges: mqsidecar_rocketmq_queue_lag of each message
// queue in lag; the series of a queue this replica no longer owns are deleted, as
// SetConsumerLag does for topics.
func (m *Metrics) SetQueueLag(lag map[adapters.QueueID]int64) {
	lagMu.Lock()
	defer lagMu.Unlock()
	owned := make(map[[3]string]int64, len(lag))
	for q, n := range lag {
		owned[[3]string{q.Topic, q.Broker, strconv.Itoa(q.ID)}] = n
	}
	ch := make(chan prometheus.Metric)
	go func() { m.QueueLag.Collect(ch); close(ch) }()
	var gone [][3]string
	for pm := range ch {
		var d dto.Metric
		if pm.Write(&d) != nil {
			continue
		}
		var k [3]string
		for _, l := range d.GetLabel() {
			switch l.GetName() {
			case "topic":
				k[0] = l.GetValue()
			case "broker":
				k[1] = l.GetValue()
			case "queue_id":
				k[2] = l.GetValue()
			}
		}
		if _, ok := owned[k]; !ok {
			gone = append(gone, k)
		}
	}
	for _, k := range gone {
		m.QueueLag.DeleteLabelValues(k[:]...)
	}
	for k, n := range owned {
		m.QueueLag.WithLabelValues(k[:]...).Set(float64(n))
	}
}

// CounterSum returns the sum of the counter series c holds (one series: its value). For the
// demo's summary and for tests; it is not on a hot path.
func CounterSum(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) == nil && d.Counter != nil {
			sum += d.Counter.GetValue()
		}
	}
	return sum
}

// SetSourceReady sets mqsidecar_source_ready: 1 when the broker connection is up.
func (m *Metrics) SetSourceReady(up bool) {
	if up {
		m.SourceReady.Set(1)
	} else {
		m.SourceReady.Set(0)
	}
}
