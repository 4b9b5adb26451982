// Package admin serves the operator endpoints: /healthz (liveness: the process serves
// HTTP; the sidecar starts this server only once its configuration is loaded and its dedup
// store open, so the Kubernetes injector's default startup probe means "started"), /readyz
// (readiness: every check passes — broker connected, app healthy, not shutting down; the
// body also carries details such as the broker durability verdict, see SetDetails) and
// /metrics (Prometheus). It binds in Listen, so a bad or busy listen address is reported
// before anything connects to a broker, and serves in Run (the lifecycle of
// internal/lifecycle: New and Listen start no goroutine; Run serves until its context
// ends, then shuts the server down, letting active requests finish for up to 2 s).
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mqsidecar/mqsidecar/internal/lifecycle"
)

// Check reports nil when its part of the sidecar is ready, else why not.
type Check func() error

// Server is the admin HTTP server.
type Server struct {
	srv     *http.Server
	ln      net.Listener
	log     *slog.Logger
	details atomic.Pointer[func() string]
	loop    lifecycle.Loop
}

// SetDetails adds the line details returns to every /readyz answer, ready or not (the
// broker durability verdict); "" adds nothing. Readiness does not depend on it.
func (s *Server) SetDetails(details func() string) { s.details.Store(&details) }

// detailLines returns the details with a leading newline, or "".
func (s *Server) detailLines() string {
	if d := s.details.Load(); d != nil {
		if line := (*d)(); line != "" {
			return "\n" + line
		}
	}
	return ""
}

// New returns a server for listen (host:port) exposing reg and ready.
func New(listen string, reg *prometheus.Registry, ready Check, log *slog.Logger) *Server {
	s := &Server{log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error()+s.detailLines(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready" + s.detailLines() + "\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.srv = &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s
}

// Listen binds the listener; Run serves on it.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.srv.Addr)
	if err != nil {
		return fmt.Errorf("admin: listen %s: %w", s.srv.Addr, err)
	}
	s.ln = ln
	s.log.Info("admin endpoints listening", "addr", ln.Addr().String())
	return nil
}

// Run serves (binding first when Listen was not called) until ctx ends, then shuts the
// server down, waiting up to shutdownWait for active requests. A server that stops on
// its own is logged, as before; Run then returns nil and the sidecar goes on without it.
func (s *Server) Run(ctx context.Context) error {
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	return s.loop.Run(ctx, s.shutdown, func() error {
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin server stopped", "error", err)
		}
		return nil
	})
}

// shutdownWait bounds how long Run's end waits for active requests.
const shutdownWait = 2 * time.Second

func (s *Server) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// All combines checks: the first failing one is reported.
func All(checks ...Check) Check {
	return func() error {
		for _, c := range checks {
			if err := c(); err != nil {
				return err
			}
		}
		return nil
	}
}
