//go:build nodemo

package main

import (
	"errors"
	"io"

	"github.com/spf13/cobra"

	"github.com/mqsidecar/mqsidecar/internal/cli"
)

// demoCommand, in a build with -tags nodemo (make build, the container image): the demo
// and the in-process Kafka it embeds (franz-go's kfake) are not linked into the binary that
// runs next to every application. The command stays, hidden, to say so and where the demo
// is; it exits 2.
func demoCommand(io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:                "demo",
		Short:              "Not in this build (built with -tags nodemo)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(*cobra.Command, []string) error {
			return cli.Usage(errors.New("this build has no demo (built with -tags nodemo, as production " +
				"builds and the container image are); run it from a source checkout: go run ./cmd/mqsidecar demo"))
		},
	}
}
