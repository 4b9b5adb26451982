// Package admin serves the operator endpoints: /healthz (liveness: the process serves
// HTTP; the sidecar starts this server only once its configuration is loaded and its dedup
// store open, so the Kubernetes injector's default startup probe means "started"), /readyz
// (readiness: every check passes — broker connected, app healthy, not shutting down; the
// body also carries details such as the broker durability verdict, see SetDetails) and
// /metrics (Prometheus). It binds in Start, so a bad or busy listen address is reported
// before anything connects to a broker.
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
)

// Check reports nil when its part of the sidecar is ready, else why not.
type Check func() error

// Server is the admin HTTP server.
type Server struct {
	srv     *http.Server
	ln      net.Listener
	log     *slog.Logger
	details atomic.Pointer[func() string]
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

// Start binds the listener and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.srv.Addr)
	if err != nil {
		return fmt.Errorf("admin: listen %s: %w", s.srv.Addr, err)
	}
	s.ln = ln
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin server stopped", "error", err)
		}
	}()
	s.log.Info("admin endpoints listening", "addr", ln.Addr().String())
	return nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Shutdown stops the server, waiting for active requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

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
