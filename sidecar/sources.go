package sidecar

import (
	"fmt"
	"log/slog"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/kafka"
	"github.com/mqsidecar/mqsidecar/adapters/rabbitmq"
	"github.com/mqsidecar/mqsidecar/adapters/rocketmq"
	"github.com/mqsidecar/mqsidecar/config"
)

// newSource builds the adapter that source.kind names; every adapter reports to ev
// (the sidecar's metrics) through adapters.Events.
func newSource(cfg config.Config, log *slog.Logger, ev adapters.Events) (adapters.Source, error) {
	dl := cfg.Delivery.DeadLetter.Target
	// The adapter's half of delivery.max_buffer_bytes; RabbitMQ buffers nothing of its own
	// (docs/guarantees.md, G4).
	buf, _ := cfg.Delivery.BufferShares()
	switch cfg.Source.Kind {
	case "kafka":
		if cfg.Source.Kafka.Mode == kafka.ModeShare {
			return kafka.NewShare(cfg.Source.Kafka, dl, kafka.WithLogger(log), kafka.WithEvents(ev), kafka.WithMaxInflight(cfg.Delivery.MaxInflight))
		}
		return kafka.New(cfg.Source.Kafka, dl, kafka.WithLogger(log), kafka.WithEvents(ev), kafka.WithMaxBufferBytes(buf))
	case "rabbitmq":
		return rabbitmq.New(cfg.Source.RabbitMQ, dl, rabbitmq.WithLogger(log), rabbitmq.WithEvents(ev))
	case "rocketmq":
		return rocketmq.New(cfg.Source.RocketMQ, dl, rocketmq.WithLogger(log), rocketmq.WithEvents(ev),
			rocketmq.WithMaxInflight(cfg.Delivery.MaxInflight), rocketmq.WithMaxBufferBytes(buf))
	}
	return nil, fmt.Errorf("source.kind %q is not supported", cfg.Source.Kind)
}
