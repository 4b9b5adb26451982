// Command mqsidecar consumes from Kafka, RocketMQ or RabbitMQ, pushes every message to a
// local app over HTTP, and acknowledges to the broker only after the app answered 2xx.
//
// Reading order for newcomers: main.go (this file: CLI and exit codes) → sidecar (wiring) →
// adapters/<broker> (Read) → ackgate (push, retry, dedup, settle) → dedup (the store).
//
// Exit status: 0 clean stop, 1 runtime failure, 2 bad configuration or usage.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/demo"
	"github.com/mqsidecar/mqsidecar/injector"
	"github.com/mqsidecar/mqsidecar/sidecar"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// usageError exits with status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	// A sidecar shares its pod's memory with the app: collect more often than Go's
	// default (heap goal 1.5x the live heap instead of 2x); GOGC overrides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	// MQSIDECAR_CPUPROFILE=file writes a CPU profile of the whole run, and
	// file.allocs its allocation profile (for `make bench`
	// investigations); it is a developer aid, not configuration.
	if path := os.Getenv("MQSIDECAR_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			_ = pprof.StartCPUProfile(f)
			code := run(os.Args[1:], os.Stdout, os.Stderr)
			pprof.StopCPUProfile()
			f.Close()
			if a, err := os.Create(path + ".allocs"); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(a, 0)
				a.Close()
			}
			os.Exit(code)
		}
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	root := rootCommand(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	if msg := err.Error(); strings.Contains(msg, "\n") {
		fmt.Fprintf(stderr, "mqsidecar: error:\n%s\n", msg)
	} else {
		fmt.Fprintln(stderr, "mqsidecar:", msg)
	}
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

func rootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "mqsidecar",
		Short:         "Consume from Kafka, RocketMQ or RabbitMQ; push to your app over HTTP; ack only after 2xx",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(runCommand(stderr), demoCommand(stdout), configCommand(stdout), versionCommand(stdout))
	root.AddCommand(injector.NewCommand())
	return root
}

func runCommand(stderr io.Writer) *cobra.Command {
	var path, level string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the sidecar",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			overrides := map[string]string{}
			if level != "" {
				overrides["log.level"] = level
			}
			cfg, err := config.Load(path, overrides)
			if err != nil {
				return usageError{err}
			}
			log := newLogger(stderr, cfg.Log)
			log.Info("mqsidecar starting", "version", buildVersion(), "config", cfg)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			sc, err := sidecar.New(cfg, log)
			if err != nil {
				log.Error("cannot start", "error", err)
				return err
			}
			if err := sc.Run(ctx); err != nil {
				log.Error("stopped with an error", "error", err)
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (YAML); every key can also be set as MQSIDECAR_<KEY>")
	cmd.Flags().StringVar(&level, "log-level", "", "override log.level (debug|info|warn|error)")
	return cmd
}

func demoCommand(stdout io.Writer) *cobra.Command {
	var opts demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run everything embedded (Kafka, an app, a producer) and show delivery, retries and dedup",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			opts.Out = stdout
			return demo.Run(ctx, opts)
		},
	}
	cmd.Flags().IntVar(&opts.Messages, "messages", 3000, "unique messages to produce")
	cmd.Flags().Float64Var(&opts.DuplicateRate, "duplicates", 0.1, "share of messages the producer sends twice")
	cmd.Flags().Float64Var(&opts.FailRate, "fail", 0.1, "share of first pushes the demo app fails")
	cmd.Flags().BoolVar(&opts.Verbose, "verbose", false, "show the sidecar's own logs")
	cmd.Flags().IntVar(&opts.Rate, "rate", 1000, "messages produced per second (0 = as fast as possible)")
	return cmd
}

func configCommand(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Configuration tools"}
	var path string
	validate := &cobra.Command{
		Use:   "validate",
		Short: "Validate a config file (and MQSIDECAR_* environment); exit 2 naming every problem",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if _, err := config.Load(path, nil); err != nil {
				return usageError{err}
			}
			fmt.Fprintln(stdout, "config ok")
			return nil
		},
	}
	validate.Flags().StringVarP(&path, "config", "c", "", "config file (YAML)")
	cmd.AddCommand(validate)
	return cmd
}

func versionCommand(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintln(stdout, "mqsidecar", buildVersion())
		},
	}
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

func newLogger(w io.Writer, c config.Log) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
