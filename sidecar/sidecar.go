// Package sidecar composes one running mqsidecar from a validated configuration: the dedup
// store, the admin endpoints, the broker adapter and the ack gate, in that order, and takes
// them down in reverse. It is what `mqsidecar run` and `mqsidecar demo` both execute, so the
// demo exercises exactly the production path.
//
// Lifecycle (internal/lifecycle): New opens the store and binds the admin listener, and
// starts no goroutine. Run composes every long-lived part under one errgroup: the admin
// server, the store's writer, the durability checks, the app's health checks, the adapter's
// loop, and the consuming sequence (durability.require, the app's first health answer, the
// gate). Each part's Run returns nil when the group's context ends; an error of one starts
// the shutdown below, and Run returns the first error.
//
// Shutdown (G5 in docs/guarantees.md): when ctx is cancelled, readiness turns false at once; the sidecar keeps
// consuming for drain_delay (so Kubernetes endpoints update), then the gate stops reading and
// drains within shutdown_timeout; the adapter commits what completed; the store is closed;
// only then does the group's context end, which stops the admin server and the rest.
package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/mqsidecar/mqsidecar/ackgate"
	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/admin"
	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/dedup/redisstore"
	"github.com/mqsidecar/mqsidecar/durability"
	"github.com/mqsidecar/mqsidecar/metrics"
	"github.com/mqsidecar/mqsidecar/publish"
	"github.com/mqsidecar/mqsidecar/tracing"

	"golang.org/x/sync/errgroup"
)

// storeLinger lets dedup group commits fill up: the gate keeps the fsync off the push path,
// so a sub-millisecond wait costs no throughput and saves most commits.
const storeLinger = time.Millisecond

// storeMaxLinger is how long a dedup group commit may wait for more records while nobody
// waits for it (the gate flushes when a lane waits for its mark, or no push is on the
// wire): with a slow app, marks are written well ahead of their push and completions only
// hold back the next broker commit, so commits may be few and large.
const storeMaxLinger = 10 * time.Millisecond

// Sidecar is one composed instance. Create it with New, then call Run once.
type Sidecar struct {
	cfg     config.Config
	log     *slog.Logger
	Metrics *metrics.Metrics
	// Version is the build's version (mqsidecar_build_info, the spans' service.version);
	// "" = the module version of the build info, else "dev".
	Version string

	admin    *admin.Server
	store    store       // nil when dedup is disabled
	appTLS   *tls.Config // app.tls: nil = the system's roots
	draining atomic.Bool
	appOK    atomic.Pointer[error]
	appState appState // the one writer of mqsidecar_app_ready
	src      atomic.Pointer[adapters.Source]
	// durable runs the broker durability checks (at start and every durability.interval).
	durable *durability.Runner
	// The publish endpoint (publish.go); nil when publish.listen is "".
	pub       *publish.Server
	publisher adapters.Publisher
	pubRuns   []func(context.Context) error
}

// store is what the sidecar needs of a dedup store: the gate's interface, Run (the
// writer) and Close.
// *dedup.Store (bbolt) and *redisstore.Store implement it; a store that also has
// Ready() error takes part in /readyz (Redis: unreachable; bbolt: paused on a full disk).
type store interface {
	ackgate.Store
	Run(ctx context.Context) error
	Close() error
}

// Both stores report their readiness (see ready).
var (
	_ interface{ Ready() error } = (*dedup.Store)(nil)
	_ interface{ Ready() error } = (*redisstore.Store)(nil)
)

// New opens the dedup store and binds the admin listener, so that a locked store or a busy
// port fails before any broker is contacted; it starts no goroutine. A shared store
// (Redis) connects once Run runs: Redis unreachable, not durable or refusing the credentials at start pauses
// consumption and shows in /readyz, as an outage later does; it is not an exit.
func New(cfg config.Config, log *slog.Logger) (*Sidecar, error) {
	s := &Sidecar{cfg: cfg, log: log, Metrics: metrics.New()}
	s.durable = durability.NewRunner(func(ctx context.Context) (durability.Report, error) { return durability.Check(ctx, cfg) },
		cfg.Durability.Interval, log, s.Metrics.BrokerDurability)
	pending := errors.New("app health not checked yet")
	s.appOK.Store(&pending)
	if cfg.Dedup.Enabled {
		st, err := s.openStore()
		if err != nil {
			return nil, err
		}
		s.store = st
	}
	if cfg.Admin.Listen != "" {
		s.admin = admin.New(cfg.Admin.Listen, s.Metrics.Registry, s.ready, log)
		s.admin.SetDetails(s.durable.Details)
		if err := s.admin.Listen(); err != nil {
			s.closeStore()
			return nil, err
		}
	}
	if err := s.openPublish(); err != nil {
		s.closeStore()
		return nil, err
	}
	return s, nil
}

// openStore opens the store dedup.store names.
func (s *Sidecar) openStore() (store, error) {
	cfg := s.cfg
	if cfg.Dedup.Store == "redis" {
		r := cfg.Dedup.Redis
		tlsCfg, err := r.TLS.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("dedup.redis.%w", err)
		}
		st, err := redisstore.New(redisstore.Options{
			Addrs: r.Addrs, MasterName: r.MasterName, Username: r.Username, Password: r.Password.Reveal(),
			DB: r.DB, TLS: tlsCfg, KeyPrefix: cfg.DedupKeyPrefix(), TTL: cfg.Dedup.TTL, Lease: r.Lease,
			WaitReplicas: r.WaitReplicas, Timeout: r.Timeout, Logger: s.log,
			OnCommit: func(_ int, took time.Duration) { s.Metrics.DedupCommit.Observe(took.Seconds()) },
			OnError:  func(error) { s.Metrics.Error("store") },
		})
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	st, err := dedup.Open(cfg.Dedup.Path, dedup.Options{
		TTL: cfg.Dedup.TTL, MaxEntries: cfg.Dedup.MaxEntries, Logger: s.log, Linger: storeLinger, MaxLinger: storeMaxLinger,
		OnCommit: func(_ int, took time.Duration, entries int64) {
			s.Metrics.DedupCommit.Observe(took.Seconds())
			s.Metrics.DedupEntries.Set(float64(entries))
		},
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}

// AdminAddr is the bound admin address, "" when disabled.
func (s *Sidecar) AdminAddr() string {
	if s.admin == nil {
		return ""
	}
	return s.admin.Addr()
}

func (s *Sidecar) ready() error {
	if s.draining.Load() {
		return errors.New("shutting down")
	}
	// The store first: while it is not connected, its reason is the one that matters.
	if r, ok := s.store.(interface{ Ready() error }); ok {
		if err := r.Ready(); err != nil {
			return fmt.Errorf("dedup store: %w", err)
		}
	}
	src := s.src.Load()
	if src == nil {
		return errors.New("not consuming yet")
	}
	if err := (*src).Ready(); err != nil {
		return err
	}
	return *s.appOK.Load()
}

// Run consumes until ctx is cancelled, then drains (package doc). It returns nil after a
// clean shutdown. The broker durability checks run in the background from the start; with
// durability.require, Run first waits for their verdict and returns an error wrapping
// durability.ErrAtRisk, having consumed nothing, when it is not ok.
func (s *Sidecar) Run(ctx context.Context) error {
	// The parts run until the drain has closed them in order (life); stop is the signal, or
	// the failure of a part, and starts the drain.
	life, endLife := context.WithCancel(context.Background())
	defer endLife()
	stop, fail := context.WithCancel(ctx)
	defer fail()
	var g errgroup.Group
	run := func(ctx context.Context, part func(context.Context) error) {
		g.Go(func() error {
			err := part(ctx)
			if err != nil {
				fail()
			}
			return err
		})
	}
	if s.admin != nil {
		run(life, s.admin.Run)
	}
	if s.store != nil {
		run(life, s.store.Run)
	}
	published := s.runPublish(stop, run)
	run(stop, func(stop context.Context) error {
		defer endLife() // last: everything is closed by now
		defer s.closeStore()
		defer func() { <-published }() // the publish endpoint drained and its publisher closed
		defer fail()                   // the parts that run until stop end with it
		return s.consume(stop, life, run)
	})
	return g.Wait()
}

// consume is Run's sequence: the durability verdict, the app's health, the source and the
// gate, then the drain. run adds a part to Run's group.
func (s *Sidecar) consume(ctx, life context.Context, run func(context.Context, func(context.Context) error)) error {
	appTLS, err := s.cfg.App.TLS.ClientConfig()
	if err != nil {
		return err
	}
	s.appTLS = appTLS
	s.Metrics.SetBuildInfo(s.version())
	tr, stopTracing, err := s.startTracing(ctx)
	if err != nil {
		return err
	}
	defer stopTracing()
	if s.cfg.Durability.Require {
		s.log.Info("checking broker durability before consuming (durability.require)")
		if err := s.durable.Require(ctx); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while checking: nothing was consumed
			}
			return err
		}
		run(ctx, s.durable.Continue)
	} else {
		run(ctx, s.durable.Run)
	}
	watch, err := s.waitApp(ctx)
	if err != nil {
		return nil // ctx ended while waiting for the app: nothing was consumed
	}
	if watch != nil {
		run(life, watch)
	}
	src, err := newSource(s.cfg, s.log, s.Metrics)
	if err != nil {
		return err
	}
	s.src.Store(&src)
	run(life, src.Run)

	gateCtx, stopGate := context.WithCancel(context.Background())
	defer stopGate()
	run(life, func(context.Context) error {
		select {
		case <-ctx.Done():
		case <-gateCtx.Done():
			return nil
		}
		s.draining.Store(true)
		s.log.Info("shutdown requested; readiness is now false", "drain_delay", s.cfg.DrainDelay, "shutdown_timeout", s.cfg.ShutdownTimeout)
		t := time.NewTimer(s.cfg.DrainDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-gateCtx.Done():
		}
		stopGate()
		return nil
	})
	d := s.cfg.Delivery
	_, gateBytes := d.BufferShares()
	gate := ackgate.New(src, s.gateStore(), ackgate.Options{
		Push: ackgate.PushOptions{
			URL: s.cfg.App.URL, Timeout: s.cfg.App.Timeout, EventType: s.cfg.App.EventType,
			MaxResponseBytes: s.cfg.App.MaxResponseBytes, MaxMessageBytes: d.MaxMessageBytes,
			TLS: appTLS,
		},
		Ordering:             ackgate.Ordering(d.Ordering),
		MaxInflight:          d.MaxInflight,
		MaxBytes:             gateBytes,
		LaneLookahead:        d.PartitionLookahead,
		MaxAttempts:          d.MaxAttempts,
		DropAfterMaxAttempts: d.DropAfterMaxAttempts,
		Backoff:              ackgate.Backoff{Initial: d.Backoff.Initial, Max: d.Backoff.Max, Multiplier: d.Backoff.Multiplier},
		DeadLetter:           s.cfg.HasDeadLetter(),
		DrainTimeout:         s.cfg.ShutdownTimeout,
		Logger:               tracing.Logger(s.log, tr.Provider),
		Metrics:              s.Metrics,
		Tracing:              tr,
		Topics:               configuredTopics(s.cfg),
		AppReachable:         func(up bool) { s.appState.reached(s.Metrics, up) },
	})
	s.log.Info("consuming", "kind", s.cfg.Source.Kind, "app", config.RedactURL(s.cfg.App.URL), "ordering", d.Ordering, "max_inflight", d.MaxInflight, "dedup", s.cfg.Dedup.Enabled, "dedup_store", s.cfg.Dedup.Store)
	runErr := gate.Run(gateCtx)
	stopGate()

	closeCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := src.Close(closeCtx); err != nil {
		s.log.Error("closing the source", "error", err)
		if runErr == nil {
			runErr = err
		}
	}
	if runErr != nil {
		return runErr
	}
	s.log.Info("stopped cleanly")
	return nil
}

// gateStore returns the store as the gate's interface (nil when dedup is disabled).
func (s *Sidecar) gateStore() ackgate.Store {
	if s.store == nil {
		return nil
	}
	return s.store
}

// waitApp waits until the app's health URL answers 2xx (when configured) and returns the
// part that keeps checking it for readiness until its context ends (nil without a health
// URL). It returns ctx's error if ctx ends first.
func (s *Sidecar) waitApp(ctx context.Context) (watch func(context.Context) error, err error) {
	if s.cfg.App.HealthURL == "" {
		var ok error
		s.appOK.Store(&ok)
		s.appState.health(s.Metrics, true)
		return nil, nil
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: s.appTLS, Proxy: http.ProxyFromEnvironment}}
	check := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.App.HealthURL, nil)
		if err != nil {
			return fmt.Errorf("app health: %w", err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("app health: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return fmt.Errorf("app health: %s answered %d", config.RedactURL(s.cfg.App.HealthURL), resp.StatusCode)
		}
		return nil
	}
	update := func(err error) {
		prev := s.appOK.Swap(&err)
		switch {
		case err != nil && *prev == nil:
			s.log.Warn("app not healthy", "error", err)
			s.appState.health(s.Metrics, false)
		case err == nil && *prev != nil:
			s.log.Info("app healthy", "health_url", config.RedactURL(s.cfg.App.HealthURL))
			s.appState.health(s.Metrics, true)
		}
	}
	s.log.Info("waiting for the app to be healthy before consuming", "health_url", config.RedactURL(s.cfg.App.HealthURL))
	for delay := 100 * time.Millisecond; ; delay = min(delay*2, 2*time.Second) {
		err := check(ctx)
		if ctx.Err() != nil {
			return nil, ctx.Err() // stopped while the check ran: its failure is no news
		}
		update(err)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
	return func(appCtx context.Context) error {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-appCtx.Done():
				return nil
			case <-t.C:
				if err := check(appCtx); appCtx.Err() == nil {
					update(err)
				}
			}
		}
	}, nil
}

func (s *Sidecar) closeStore() {
	if s.store != nil {
		if err := s.store.Close(); err != nil {
			s.log.Error("closing the dedup store", "error", err)
		}
	}
}
