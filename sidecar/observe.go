package sidecar

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/mqsidecar/mqsidecar/ackgate"
	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/internal/cli"
	"github.com/mqsidecar/mqsidecar/metrics"
	"github.com/mqsidecar/mqsidecar/tracing"
)

// version is the build's version: Version, else what the build info says.
func (s *Sidecar) version() string {
	if s.Version != "" {
		return s.Version
	}
	return cli.Version("dev")
}

// startTracing sets up what tracing.* asks for (package tracing) and returns the gate's
// options for it and a stop that flushes the spans still batched. Off, both are no-ops:
// the gate records nothing.
func (s *Sidecar) startTracing(ctx context.Context) (ackgate.Tracing, func(), error) {
	tp, shutdown, err := tracing.Setup(ctx, s.cfg.Tracing, s.version(), s.log)
	if err != nil || tp == nil {
		return ackgate.Tracing{}, func() {}, err
	}
	s.log.Info("tracing on: a span per delivery and per push, exported over OTLP/HTTP", "endpoint", config.RedactURL(s.cfg.Tracing.Endpoint))
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdown(ctx); err != nil {
			s.log.Warn("tracing: flushing the last spans", "error", err)
		}
	}
	return ackgate.Tracing{Provider: tp, Attributes: sourceAttributes(s.cfg)}, stop, nil
}

// sourceAttributes are the consumer spans' attributes that the configuration knows and a
// delivery does not carry.
func sourceAttributes(cfg config.Config) []attribute.KeyValue {
	switch src := cfg.Source; src.Kind {
	case "kafka":
		return []attribute.KeyValue{semconv.MessagingConsumerGroupName(src.Kafka.Group), semconv.MessagingClientID(src.Kafka.ClientID)}
	case "rocketmq":
		attrs := []attribute.KeyValue{semconv.MessagingConsumerGroupName(src.RocketMQ.Group), semconv.MessagingRocketMQConsumptionModelClustering}
		if src.RocketMQ.Namespace != "" {
			attrs = append(attrs, semconv.MessagingRocketMQNamespace(src.RocketMQ.Namespace))
		}
		return attrs
	}
	return nil
}

// configuredTopics are the topics or queues the configuration names: the values of the
// delivery counters' topic label.
func configuredTopics(cfg config.Config) []string {
	switch src := cfg.Source; src.Kind {
	case "kafka":
		return src.Kafka.Topics
	case "rocketmq":
		return []string{src.RocketMQ.Topic}
	case "rabbitmq":
		return []string{src.RabbitMQ.Queue}
	}
	return nil
}

// appState writes mqsidecar_app_ready, and nothing else does: 1 while the last health check
// (app.health_url; none configured counts as passed) passed and the pushes reach the app
// (the gate reports each change), 0 otherwise. Two writers setting the gauge each from
// their own view made it say whichever spoke last.
type appState struct {
	mu                 sync.Mutex
	unhealthy, unreach bool
}

func (a *appState) health(m *metrics.Metrics, ok bool) { a.set(m, func() { a.unhealthy = !ok }) }

func (a *appState) reached(m *metrics.Metrics, ok bool) { a.set(m, func() { a.unreach = !ok }) }

func (a *appState) set(m *metrics.Metrics, change func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	change()
	if a.unhealthy || a.unreach {
		m.AppReady.Set(0)
	} else {
		m.AppReady.Set(1)
	}
}
