package injector

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/mqsidecar/mqsidecar/internal/cli"
)

// ServerConfig configures the webhook server run by the inject command.
type ServerConfig struct {
	// Listen is the HTTPS address of the webhook (/mutate, /healthz).
	Listen string
	// MetricsListen is the plain HTTP address of /metrics, /healthz and /readyz ("" = off).
	MetricsListen string
	// CertFile and KeyFile hold the serving key pair; they are re-read when they change.
	CertFile, KeyFile string
	// CertCheckInterval is how often (at most) the key pair files are checked for changes.
	CertCheckInterval time.Duration
	// ShutdownDelay keeps serving after SIGTERM with /readyz failing, so the API server stops
	// sending reviews here before the listener closes (a refused call means a pod created
	// without its sidecar under failurePolicy Ignore).
	ShutdownDelay time.Duration
	// Injector holds the sidecar defaults.
	Injector Options
}

// Server is a running webhook server. Build it with NewServer, run it with Run.
type Server struct {
	cfg      ServerConfig
	log      *slog.Logger
	webhook  net.Listener
	metrics  net.Listener // nil when MetricsListen is ""
	handler  *Handler
	reloader *CertReloader
	registry *prometheus.Registry
	draining atomic.Bool
}

// NewServer validates cfg, loads the key pair and binds the listeners (so a bad address or
// certificate is reported before anything runs, and tests can listen on port 0).
func NewServer(cfg ServerConfig, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	inj, err := New(cfg.Injector)
	if err != nil {
		return nil, err
	}
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, fmt.Errorf("%w: --tls-cert-file and --tls-key-file are required", ErrInvalidOptions)
	}
	if cfg.CertCheckInterval < 0 || cfg.ShutdownDelay < 0 {
		return nil, fmt.Errorf("%w: durations must not be negative", ErrInvalidOptions)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := NewMetrics(reg)
	reloader, err := NewCertReloader(cfg.CertFile, cfg.KeyFile, cfg.CertCheckInterval, log, m)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, handler: NewHandler(inj, log, m), reloader: reloader, registry: reg}
	if s.webhook, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("injector: listen %s: %w", cfg.Listen, err)
	}
	if cfg.MetricsListen != "" {
		if s.metrics, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			_ = s.webhook.Close()
			return nil, fmt.Errorf("injector: listen %s: %w", cfg.MetricsListen, err)
		}
	}
	return s, nil
}

// WebhookAddr is the bound address of the HTTPS webhook listener.
func (s *Server) WebhookAddr() net.Addr { return s.webhook.Addr() }

// MetricsAddr is the bound address of the metrics listener, nil when disabled.
func (s *Server) MetricsAddr() net.Addr {
	if s.metrics == nil {
		return nil
	}
	return s.metrics.Addr()
}

// Run serves until ctx is cancelled, then fails /readyz, waits ShutdownDelay, and shuts the
// servers down gracefully (bounded by 10s). It returns nil after a clean shutdown.
func (s *Server) Run(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.Handle("/mutate", s.handler)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	servers := []*http.Server{{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: s.reloader.GetCertificate,
		},
	}}
	listeners := []net.Listener{tls.NewListener(s.webhook, servers[0].TLSConfig)}
	if s.metrics != nil {
		mmux := http.NewServeMux()
		mmux.Handle("/metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
		mmux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		mmux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if s.draining.Load() {
				http.Error(w, "shutting down", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		servers = append(servers, &http.Server{
			Handler:           mmux,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		})
		listeners = append(listeners, s.metrics)
	}

	g, gctx := errgroup.WithContext(ctx)
	for i, srv := range servers {
		g.Go(func() error {
			if err := srv.Serve(listeners[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("injector: serve %s: %w", listeners[i].Addr(), err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		if ctx.Err() != nil { // a real stop request, not a failed server
			s.draining.Store(true)
			s.log.Info("stopping: failing readiness, then draining", "delay", s.cfg.ShutdownDelay)
			t := time.NewTimer(s.cfg.ShutdownDelay)
			<-t.C
		}
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var errs []error
		for _, srv := range servers {
			if err := srv.Shutdown(sctx); err != nil {
				errs = append(errs, fmt.Errorf("injector: shutdown: %w", err))
			}
		}
		return errors.Join(errs...)
	})
	s.log.Info("injector serving", "webhook", s.webhook.Addr().String(), "metrics", fmt.Sprint(s.MetricsAddr()),
		"image", s.cfg.Injector.Image, "mode", string(s.handler.inj.opts.Mode))
	if err := g.Wait(); err != nil {
		return err
	}
	s.log.Info("injector stopped")
	return nil
}

// NewCommand returns the root command of the mqsidecar-injector binary
// (cmd/mqsidecar-injector): the mutating admission webhook server. It has no subcommands
// of its own; the binary adds `version`.
func NewCommand() *cobra.Command {
	cfg := ServerConfig{}
	var (
		mode, pullPolicy, logLevel, logFormat string
		cpuReq, cpuLim, memReq, memLim, pvcSz string
		adminPort                             int
	)
	cmd := &cobra.Command{
		Use:   "mqsidecar-injector",
		Short: "Run the Kubernetes admission webhook that injects the mqsidecar sidecar into annotated pods",
		Long: `Run the mutating admission webhook that adds the mqsidecar sidecar to pods annotated
mqsidecar.io/inject: "true". Deploy it with the Helm chart charts/mqsidecar, which also creates
the certificate and the MutatingWebhookConfiguration. The serving certificate files are re-read
when they change, so a rotated certificate needs no restart.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true, // the caller prints the returned error
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			res, err := resources(cpuReq, cpuLim, memReq, memLim)
			if err != nil {
				return err
			}
			if pvcSz != "" {
				q, err := resource.ParseQuantity(pvcSz)
				if err != nil {
					return fmt.Errorf("%w: --dedup-pvc-size: %q: %w", ErrInvalidOptions, pvcSz, err)
				}
				cfg.Injector.DedupPVCSize = q
			}
			if adminPort < 1 || adminPort > 65535 {
				return fmt.Errorf("%w: --admin-port: must be 1-65535, got %d", ErrInvalidOptions, adminPort)
			}
			cfg.Injector.AdminPort = int32(adminPort)
			cfg.Injector.Mode = Mode(mode)
			cfg.Injector.ImagePullPolicy = corev1.PullPolicy(pullPolicy)
			cfg.Injector.Resources = res
			srv, err := NewServer(cfg, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return srv.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", ":8443", "HTTPS address of the webhook (/mutate)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", ":9090", `plain HTTP address of /metrics, /healthz, /readyz ("" disables)`)
	f.StringVar(&cfg.CertFile, "tls-cert-file", "", "serving certificate (PEM); re-read when it changes")
	f.StringVar(&cfg.KeyFile, "tls-key-file", "", "serving private key (PEM); re-read when it changes")
	f.DurationVar(&cfg.CertCheckInterval, "cert-check-interval", 10*time.Second, "how often the certificate files are checked for rotation")
	f.DurationVar(&cfg.ShutdownDelay, "shutdown-delay", 5*time.Second, "keep serving this long after SIGTERM with /readyz failing")
	f.StringVar(&cfg.Injector.Image, "sidecar-image", "", "sidecar image to inject (required)")
	f.StringVar(&pullPolicy, "sidecar-image-pull-policy", "", "sidecar imagePullPolicy (Always, IfNotPresent, Never; empty: Kubernetes default)")
	f.StringVar(&mode, "sidecar-mode", string(ModeNative), `default sidecar mode: "native" (init container with restartPolicy Always, Kubernetes >= 1.29) or "container"`)
	f.StringVar(&cpuReq, "sidecar-cpu-request", "50m", "default sidecar CPU request (empty: none)")
	f.StringVar(&cpuLim, "sidecar-cpu-limit", "", "default sidecar CPU limit (empty: none)")
	f.StringVar(&memReq, "sidecar-memory-request", "64Mi", "default sidecar memory request (empty: none)")
	f.StringVar(&memLim, "sidecar-memory-limit", "256Mi", "default sidecar memory limit (empty: none)")
	f.IntVar(&adminPort, "admin-port", 9464, "default sidecar admin port (/healthz /readyz /metrics)")
	f.BoolVar(&cfg.Injector.WaitForReady, "wait-for-ready", false,
		"apps wait for their native sidecar to be ready (/readyz: broker connected) instead of started (/healthz); annotation mqsidecar.io/wait-for-ready overrides it")
	f.DurationVar(&cfg.Injector.MinTerminationGracePeriod, "min-termination-grace-period", 45*time.Second,
		"raise pods' terminationGracePeriodSeconds to at least this, so the sidecar can drain (0: never)")
	f.StringVar(&pvcSz, "dedup-pvc-size", "1Gi", "default size of the dedup PVC added to StatefulSets")
	f.StringVar(&cfg.Injector.DedupStorageClass, "dedup-storage-class", "", "default StorageClass of that PVC (empty: cluster default)")
	f.StringVar(&cfg.Injector.SecretEnv, "sidecar-secret-env", "",
		`default sidecar variables from Secret keys, "NAME=SECRET/KEY,..." (Secrets of the pod's namespace; annotation mqsidecar.io/secret-env replaces it)`)
	f.StringVar(&cfg.Injector.SecretEnvFrom, "sidecar-secret-env-from", "",
		`default Secrets whose keys become sidecar variables, "SECRET,..." (annotation mqsidecar.io/secret-env-from replaces it)`)
	f.StringVar(&cfg.Injector.SecretVolumes, "sidecar-secret-volumes", "",
		`default Secrets mounted read-only at `+SecretsDir+`/<secret>, "SECRET,..." (annotation mqsidecar.io/secret-volumes replaces it)`)
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "json", "json or text")
	return cmd
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: --log-level: %q: want debug, info, warn or error", ErrInvalidOptions, level)
	}
	opts := &slog.HandlerOptions{Level: lv, ReplaceAttr: cli.LogDurations}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("%w: --log-format: %q: want json or text", ErrInvalidOptions, format)
	}
}

func resources(cpuReq, cpuLim, memReq, memLim string) (corev1.ResourceRequirements, error) {
	var res corev1.ResourceRequirements
	for _, r := range []struct {
		flag, value string
		name        corev1.ResourceName
		list        *corev1.ResourceList
	}{
		{"--sidecar-cpu-request", cpuReq, corev1.ResourceCPU, &res.Requests},
		{"--sidecar-cpu-limit", cpuLim, corev1.ResourceCPU, &res.Limits},
		{"--sidecar-memory-request", memReq, corev1.ResourceMemory, &res.Requests},
		{"--sidecar-memory-limit", memLim, corev1.ResourceMemory, &res.Limits},
	} {
		if strings.TrimSpace(r.value) == "" {
			continue
		}
		q, err := resource.ParseQuantity(strings.TrimSpace(r.value))
		if err != nil || q.Sign() <= 0 {
			return res, fmt.Errorf("%w: %s: %q is not a positive quantity", ErrInvalidOptions, r.flag, r.value)
		}
		if *r.list == nil {
			*r.list = corev1.ResourceList{}
		}
		(*r.list)[r.name] = q
	}
	return res, nil
}
