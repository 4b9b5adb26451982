package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/kafka"
	"github.com/mqsidecar/mqsidecar/adapters/rabbitmq"
	"github.com/mqsidecar/mqsidecar/adapters/rocketmq"
	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/dedup/redisstore"
	"github.com/mqsidecar/mqsidecar/publish"
)

// Both stores keep the endpoint's idempotency keys (their records).
var (
	_ publish.Records = (*dedup.Store)(nil)
	_ publish.Records = (*redisstore.Store)(nil)
)

// newPublisher builds the publisher of source.kind on the source's connection settings.
func newPublisher(cfg config.Config, log *slog.Logger) (adapters.Publisher, error) {
	switch cfg.Source.Kind {
	case "kafka":
		return kafka.NewPublisher(cfg.Source.Kafka, cfg.Publish.Timeout, kafka.WithPublisherLogger(log))
	case "rabbitmq":
		return rabbitmq.NewPublisher(cfg.Source.RabbitMQ, rabbitmq.WithLogger(log))
	case "rocketmq":
		return rocketmq.NewPublisher(cfg.Source.RocketMQ, rocketmq.WithLogger(log))
	}
	return nil, fmt.Errorf("publish.listen: source.kind %q has no publisher", cfg.Source.Kind)
}

// PublishParts is what a handler added to the publish endpoint is built from.
type PublishParts struct {
	Config    config.Config
	Logger    *slog.Logger
	Publisher adapters.Publisher
	// Records is the store's key space for the endpoint (nil without a store).
	Records publish.Records
}

// PublishMount is a handler added to the publish endpoint beside its own routes, with the
// background work it needs (Run may be nil). Run's context ends after the endpoint
// drained, before the publisher and the store close.
type PublishMount struct {
	Pattern string
	// More are further patterns for Handler (a subtree and its root, say).
	More    []string
	Handler http.Handler
	Run     func(context.Context) error
}

// publishMounts build the handlers added to the endpoint (the transactions handler
// registers itself here from a file of its own).
var publishMounts []func(PublishParts) (PublishMount, error)

// openPublish builds the publisher and the endpoint and binds its listener (New), when
// publish.listen is set.
func (s *Sidecar) openPublish() error {
	if s.cfg.Publish.Listen == "" {
		return nil
	}
	p, err := newPublisher(s.cfg, s.log)
	if err != nil {
		return err
	}
	parts := PublishParts{Config: s.cfg, Logger: s.log, Publisher: p}
	if r, ok := s.store.(publish.Records); ok {
		parts.Records = r
	}
	srv, err := publish.New(publish.Options{
		Settings: s.cfg.Publish, Broker: s.cfg.Source.Kind, Publisher: p, Records: parts.Records,
		Registerer: s.Metrics.Registry, Logger: s.log,
	})
	if err != nil {
		return err
	}
	for _, mk := range publishMounts {
		m, err := mk(parts)
		if err != nil {
			return err
		}
		for _, pattern := range append([]string{m.Pattern}, m.More...) {
			srv.Mount(pattern, m.Handler)
		}
		if m.Run != nil {
			s.pubRuns = append(s.pubRuns, m.Run)
		}
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	s.pub, s.publisher = srv, p
	return nil
}

// PublishAddr is the bound address of the publish endpoint, "" when off.
func (s *Sidecar) PublishAddr() string {
	if s.pub == nil {
		return ""
	}
	return s.pub.Addr()
}

// runPublish adds the endpoint, the publisher and the mounts' work to Run's group. The
// endpoint serves until stop ends, then drains its requests in flight; only then do the
// publisher and the mounts' work stop. The channel is closed once all of them returned,
// so the store closes after (at once without an endpoint).
func (s *Sidecar) runPublish(stop context.Context, run func(context.Context, func(context.Context) error)) <-chan struct{} {
	done := make(chan struct{})
	if s.pub == nil {
		close(done)
		return done
	}
	pctx, endPub := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, part := range append([]func(context.Context) error{s.publisher.Run}, s.pubRuns...) {
		wg.Add(1)
		run(pctx, func(ctx context.Context) error { defer wg.Done(); return part(ctx) })
	}
	run(stop, func(stop context.Context) error {
		err := s.pub.Run(stop)
		endPub()
		wg.Wait()
		close(done)
		return err
	})
	return done
}
