package sidecar

import (
	"fmt"
	"log/slog"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/kafka"
	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/metrics"
)

// newSource builds the adapter that source.kind names.
func newSource(cfg config.Config, log *slog.Logger, m *metrics.Metrics) (adapters.Source, error) {
	dl := cfg.Delivery.DeadLetter.Target
	switch cfg.Source.Kind {
	case "kafka":
		return kafka.New(cfg.Source.Kafka, dl, kafka.WithLogger(log), kafka.WithMetrics(m))
	}
	return nil, fmt.Errorf("source.kind %q is not supported by this build", cfg.Source.Kind)
}
