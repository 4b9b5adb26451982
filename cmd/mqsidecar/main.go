// Command mqsidecar consumes from Kafka, RocketMQ or RabbitMQ, pushes every message to a
// local app over HTTP, and acknowledges to the broker only after the app answered 2xx.
//
// Reading order for newcomers: main.go (this file: CLI and exit codes) → sidecar (wiring) →
// adapters/<broker> (Read) → ackgate (push, retry, dedup, settle) → dedup (the store).
//
// Exit status: 0 clean stop, 1 runtime failure, 2 bad configuration or usage, 3 the broker
// is at risk (`mqsidecar doctor`, or `run` with durability.require).
//
// The Kubernetes admission webhook is a separate command, cmd/mqsidecar-injector, so this
// binary, which runs next to every application pod, links no k8s.io package.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/pprof"

	"github.com/spf13/cobra"

	"github.com/mqsidecar/mqsidecar/cmd/mqsidecar/internal/stopsignal"
	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/durability"
	"github.com/mqsidecar/mqsidecar/internal/cli"
	"github.com/mqsidecar/mqsidecar/sidecar"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	// SIGTERM and SIGINT have been caught since package stopsignal was initialized, early in
	// start-up and before anything in main (the GC setting, config loading): they cancel ctx
	// instead of ending the process with the runtime's default (death by the signal, status
	// 143). A signal at any moment of start-up thus stops the sidecar cleanly, with status 0;
	// when nothing has started yet, there is nothing to drain (G5 in docs/guarantees.md).
	ctx := stopsignal.Context()
	code := profiled(func() int { return run(ctx, os.Args[1:], os.Stdout, os.Stderr) })
	stopsignal.Stop()
	os.Exit(code)
}

// profiled calls run after setting the GC target, under a CPU profile when asked for one.
func profiled(run func() int) int {
	// A sidecar shares its pod's memory with the app: collect more often than Go's
	// default (heap goal 1.5x the live heap instead of 2x); GOGC overrides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	// MQSIDECAR_CPUPROFILE=file writes a CPU profile of the whole run, and
	// file.allocs its allocation profile (for `make bench`
	// investigations); it is a developer aid, not configuration.
	path := os.Getenv("MQSIDECAR_CPUPROFILE")
	if path == "" {
		return run()
	}
	f, err := os.Create(path)
	if err != nil {
		return run()
	}
	_ = pprof.StartCPUProfile(f)
	code := run()
	pprof.StopCPUProfile()
	f.Close()
	if a, err := os.Create(path + ".allocs"); err == nil {
		_ = pprof.Lookup("allocs").WriteTo(a, 0)
		a.Close()
	}
	return code
}

// run executes the command line args; ctx ends when the process is asked to stop
// (SIGTERM/SIGINT). It returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := rootCommand(stdout, stderr)
	root.SetContext(ctx)
	return cli.Execute(root, args, stderr)
}

func rootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "mqsidecar",
		Short: "Consume from Kafka, RocketMQ or RabbitMQ; push to your app over HTTP; ack only after 2xx",
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(runCommand(stderr), demoCommand(stdout), configCommand(stdout), doctorCommand(stdout), injectMovedCommand())
	cli.AddVersion(root, version) // `mqsidecar --version` and `mqsidecar version`
	return root
}

// injectMovedCommand answers the former `mqsidecar inject` subcommand (hidden): the
// webhook is the mqsidecar-injector binary now, in the same image, with the same flags.
func injectMovedCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "inject",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(*cobra.Command, []string) error {
			return cli.Usage(errors.New("`mqsidecar inject` is now its own command: run `mqsidecar-injector` " +
				"with the same flags (/usr/local/bin/mqsidecar-injector in the same image)"))
		},
	}
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
				return cli.Usage(err)
			}
			log := newLogger(stderr, cfg.Log)
			ctx := cmd.Context() // cancelled by SIGTERM/SIGINT (main)
			if ctx.Err() != nil {
				log.Info("stop requested before start; nothing was consumed", "version", cli.Version(version))
				return nil
			}
			log.Info("mqsidecar starting", "version", cli.Version(version), "config", cfg)
			sc, err := sidecar.New(cfg, log)
			if err != nil {
				log.Error("cannot start", "error", err)
				return err
			}
			sc.Version = cli.Version(version)
			if err := sc.Run(ctx); err != nil {
				if errors.Is(err, durability.ErrAtRisk) {
					log.Error("refusing to start", "error", err)
					return cli.ExitError{Code: durability.ExitAtRisk, Err: err}
				}
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

func configCommand(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Configuration tools"}
	var path string
	validate := &cobra.Command{
		Use:   "validate",
		Short: "Validate a config file (and MQSIDECAR_* environment); exit 2 naming every problem",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if _, err := config.Load(path, nil); err != nil {
				return cli.Usage(err)
			}
			fmt.Fprintln(stdout, "config ok")
			return nil
		},
	}
	validate.Flags().StringVarP(&path, "config", "c", "", "config file (YAML)")
	cmd.AddCommand(validate)
	return cmd
}

func newLogger(w io.Writer, c config.Log) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: cli.LogDurations}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
