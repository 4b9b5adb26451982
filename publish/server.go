// Package publish is the producer side's HTTP surface: the publish endpoint on its own
// listener (publish.listen), which turns one HTTP request into one message published
// through the broker's adapters.Publisher and answers 2xx only after the broker confirmed
// it durable (the rule of adapters.Publisher; docs/guarantees.md, "Publishing").
//
// Routes:
//
//	POST /v1/publish/{topic}                  the payload is the body, unchanged; 200 + Receipt
//	POST /v1/publish/{exchange}/{routing-key} RabbitMQ (or the mqsidecar-routing-key header)
//	POST /v1.0/publish/{pubsubname}/{topic}   Dapr's publish API: 204, Dapr's error bodies
//
// plus what Mount adds (the transactions handler).
//
// Headers map to message headers as the consumer side maps them back (headers.go). The
// message ID is Idempotency-Key, else ce-id, else a generated one (answered in the
// Receipt); with a store (Records), a key is remembered with its payload's hash and its
// receipt (idempotency.go): a retry of a confirmed key answers the first receipt without
// sending, a retry while the first is in flight answers 409, the same key with another
// payload 422, and a retry after a failure sends again with the same ID, so the consumer
// side's dedup removes the copy.
//
// Lifecycle (internal/lifecycle): New starts nothing; Listen binds; Run serves until ctx
// ends, then stops accepting and waits for the publishes in flight (each bounded by
// publish.timeout) before it returns, so the sidecar closes the publisher only after.
package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle"

	"github.com/prometheus/client_golang/prometheus"
)

// Options configure New.
type Options struct {
	Settings Settings
	// Broker is the source.kind: "kafka", "rabbitmq" or "rocketmq".
	Broker    string
	Publisher adapters.Publisher
	// Records remembers idempotency keys and receipts (the sidecar's dedup store); nil =
	// no memory: every request is sent, still with its ID, so the consumer side dedups.
	Records Records
	// Registerer receives the publish metrics; nil = none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Now is the clock, for tests; nil = time.Now.
	Now func() time.Time
}

// Server is the publish endpoint.
type Server struct {
	opts Options
	log  *slog.Logger
	mux  *http.ServeMux
	srv  *http.Server
	ln   net.Listener
	m    *serverMetrics
	loop lifecycle.Loop

	mu       sync.Mutex
	inflight sync.WaitGroup
	closing  bool
}

// New returns the endpoint; it binds nothing and starts no goroutine.
func New(o Options) (*Server, error) {
	if o.Publisher == nil {
		return nil, errors.New("publish: no publisher")
	}
	if o.Settings.MaxMessageBytes <= 0 || o.Settings.Timeout <= 0 {
		d := Defaults()
		if o.Settings.MaxMessageBytes <= 0 {
			o.Settings.MaxMessageBytes = d.MaxMessageBytes
		}
		if o.Settings.Timeout <= 0 {
			o.Settings.Timeout = d.Timeout
		}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	m, err := newServerMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: o, log: o.Logger.With("component", "publish"), mux: http.NewServeMux(), m: m}
	s.mux.HandleFunc("POST /v1/publish/{topic...}", s.publishNative)
	s.mux.HandleFunc("POST /v1.0/publish/{pubsub}/{topic...}", s.publishDapr)
	s.srv = &http.Server{Addr: o.Settings.Listen, Handler: s, ReadHeaderTimeout: 5 * time.Second}
	return s, nil
}

// Mount adds h for pattern (net/http.ServeMux syntax, e.g. "/v1/transactions/") on the
// endpoint's listener; call it before Run. Requests to h count as in flight for the drain.
func (s *Server) Mount(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// ServeHTTP implements http.Handler: every request is in flight until it is answered, and
// one arriving after the drain started is answered 503.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		w.Header().Set("Connection", "close")
		writeProblem(w, http.StatusServiceUnavailable, "the sidecar is shutting down")
		return
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	defer s.inflight.Done()
	s.mux.ServeHTTP(w, r)
}

// Listen binds the listener; Run serves on it.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.srv.Addr)
	if err != nil {
		return fmt.Errorf("publish: listen %s: %w", s.srv.Addr, err)
	}
	s.ln = ln
	s.log.Info("publish endpoint listening", "addr", ln.Addr().String(), "broker", s.opts.Broker)
	return nil
}

// Addr is the bound address (useful with port 0), "" before Listen.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Run serves (binding first when Listen was not called) until ctx ends, then drains
// (Drain) and returns nil.
func (s *Server) Run(ctx context.Context) error {
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	return s.loop.Run(ctx, func() { s.Drain(context.Background()) }, func() error {
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("publish: serve: %w", err)
		}
		return nil
	})
}

// Drain stops taking requests and waits for those in flight (each ends within
// publish.timeout, plus the time to write its answer), or until ctx ends.
func (s *Server) Drain(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	wait, cancel := context.WithTimeout(ctx, s.opts.Settings.Timeout+2*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(wait) // stops accepting, closes idle connections, waits for active ones
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-wait.Done():
		s.log.Warn("publish endpoint stopped with requests still in flight", "waited", s.opts.Settings.Timeout+2*time.Second)
	}
	_ = s.srv.Close()
}
