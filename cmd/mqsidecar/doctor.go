package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/mqsidecar/mqsidecar/config"
	"github.com/mqsidecar/mqsidecar/durability"
	"github.com/mqsidecar/mqsidecar/internal/cli"
)

// doctorCommand is `mqsidecar doctor`: the broker durability audit of package durability,
// once, with the sidecar's own settings. Exit 0 all ok, 3 something at risk or unknown,
// 2 bad configuration, 1 could not connect (within --timeout, durability.Timeout).
func doctorCommand(stdout io.Writer) *cobra.Command {
	var path, output string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that the broker keeps what it acknowledged: replication, queue type, flushing (exit 0 ok, 3 at risk or unverified, 1 could not connect, 2 bad config)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return cli.Usage(fmt.Errorf("--output: must be table or json, got %q", output))
			}
			if timeout <= 0 {
				return cli.Usage(fmt.Errorf("--timeout: must be greater than 0, got %s", timeout))
			}
			cfg, err := config.Load(path, nil)
			if err != nil {
				return cli.Usage(err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			rep, err := durability.Check(ctx, cfg)
			if err != nil {
				if errors.Is(err, durability.ErrConfig) {
					return cli.Usage(err)
				}
				if output == "json" {
					_ = durability.WriteJSONError(stdout, cfg.Source.Kind, err, durability.ExitUnreachable)
				}
				return err // exit 1, the reason on stderr
			}
			if output == "json" {
				err = rep.WriteJSON(stdout)
			} else {
				err = rep.WriteTable(stdout)
			}
			if err != nil {
				return err
			}
			if code := rep.ExitCode(); code != durability.ExitOK {
				return cli.ExitError{Code: code}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (YAML); every key can also be set as MQSIDECAR_<KEY>")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table | json")
	cmd.Flags().DurationVar(&timeout, "timeout", durability.Timeout, "give up (exit 1) when the broker has not answered by then")
	return cmd
}
