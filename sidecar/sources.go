package sidecar

import (
	"fmt"
	"log/slog"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/kafka"
	"github.com/mqsidecar/mqsidecar/adapters/rabbitmq"
	"github.com/mqsidecar/mqsidecar/adapters/rocketmq"
	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/metrics"
)

// newSource builds the adapter that source.kind names.
func newSource(cfg config.Config, log *slog.Logger, m *metrics.Metrics) (adapters.Source, error) {
	dl := cfg.Delivery.DeadLetter.Target
	switch cfg.Source.Kind {
	case "kafka":
		return kafka.New(cfg.Source.Kafka, dl, kafka.WithLogger(log), kafka.WithMetrics(m))
	case "rabbitmq":
		return rabbitmq.New(cfg.Source.RabbitMQ, dl, rabbitmq.WithLogger(log), rabbitmq.WithMetrics(rabbitMetrics{m}))
	case "rocketmq":
		return rocketmq.New(cfg.Source.RocketMQ, dl, rocketmq.WithLogger(log), rocketmq.WithMetrics(m),
			rocketmq.WithMaxInflight(cfg.Delivery.MaxInflight))
	}
	return nil, fmt.Errorf("source.kind %q is not supported", cfg.Source.Kind)
}

// rabbitMetrics maps the RabbitMQ adapter's events onto the sidecar's metrics.
type rabbitMetrics struct{ m *metrics.Metrics }

func (r rabbitMetrics) Inc(e rabbitmq.Event) {
	switch e {
	case rabbitmq.EventConnectFailed, rabbitmq.EventConnectionLost, rabbitmq.EventConsumerCancelled:
		r.m.Error("broker")
	case rabbitmq.EventDeadLetterFailed:
		r.m.Error("dead_letter")
	case rabbitmq.EventMissingID:
		r.m.Error("missing_message_id")
	}
}

func (r rabbitMetrics) SetConnected(up bool) {
	if up {
		r.m.SourceReady.Set(1)
	} else {
		r.m.SourceReady.Set(0)
	}
}
