//go:build !nodemo

package main

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/mqsidecar/mqsidecar/demo"
)

// demoCommand is `mqsidecar demo`. It links franz-go's in-process Kafka (kfake) through
// package demo; production builds (make build, the Dockerfile) use -tags nodemo, which
// replaces this file with nodemo.go.
func demoCommand(stdout io.Writer) *cobra.Command {
	var opts demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run everything embedded (Kafka, an app, a producer) and show delivery, retries and dedup",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Out = stdout
			return demo.Run(cmd.Context(), opts) // cmd.Context() ends on SIGTERM/SIGINT (main)
		},
	}
	cmd.Flags().IntVar(&opts.Messages, "messages", 3000, "unique messages to produce")
	cmd.Flags().Float64Var(&opts.DuplicateRate, "duplicates", 0.1, "share of messages the producer sends twice")
	cmd.Flags().Float64Var(&opts.FailRate, "fail", 0.1, "share of first pushes the demo app fails")
	cmd.Flags().BoolVar(&opts.Verbose, "verbose", false, "show the sidecar's own logs")
	cmd.Flags().IntVar(&opts.Rate, "rate", 1000, "messages produced per second (0 = as fast as possible)")
	return cmd
}
