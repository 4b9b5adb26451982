// Command mqsidecar-injector is the Kubernetes mutating admission webhook that adds the
// mqsidecar sidecar to annotated pods (package injector; deployed by charts/mqsidecar).
//
// It is a separate binary from cmd/mqsidecar, though shipped in the same image, so that the
// sidecar, which runs next to every application pod, does not link the Kubernetes API
// packages (a larger binary and a higher resident memory in every pod).
//
//	mqsidecar-injector --tls-cert-file=… --tls-key-file=… --sidecar-image=… [flags]
//	mqsidecar-injector version
//
// Exit status: 0 clean stop, 1 runtime failure, 2 bad flags or options.
package main

import (
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/mqsidecar/mqsidecar/injector"
	"github.com/mqsidecar/mqsidecar/internal/cli"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return cli.Execute(rootCommand(stdout, stderr), args, stderr, injector.ErrInvalidOptions)
}

func rootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := injector.NewCommand()
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(cli.VersionCommand(root.Name(), version))
	return root
}
