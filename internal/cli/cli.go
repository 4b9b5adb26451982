// Package cli is what the mqsidecar and mqsidecar-injector commands share: exit statuses,
// error printing and the build version.
//
// Exit status: 0 success, 1 runtime failure, 2 bad configuration or usage; a command may
// end with another status through ExitError (mqsidecar: 3, the broker is at risk).
package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// UsageError marks a usage or configuration error: the command exits with status 2.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Usage wraps err as a UsageError.
func Usage(err error) error { return UsageError{Err: err} }

// ExitError ends the command with status Code (3: the broker is at risk, see
// `mqsidecar doctor`); Err, when not nil, is printed as any failure is.
type ExitError struct {
	Code int
	Err  error
}

func (e ExitError) Error() string {
	if e.Err == nil {
		return ""
	}
	return e.Err.Error()
}
func (e ExitError) Unwrap() error { return e.Err }

// Execute runs root with args, prints a failure to stderr prefixed with the root command's
// name, and returns the exit status: 0 on success; 2 for a UsageError, a flag parsing error
// or an error that matches (errors.Is) one of usageErrs; an ExitError's Code (printing
// nothing when its Err is nil); 1 otherwise.
func Execute(root *cobra.Command, args []string, stderr io.Writer, usageErrs ...error) int {
	root.SilenceUsage = true
	root.SilenceErrors = true // printed below, once
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return Usage(err) })
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee ExitError
	if errors.As(err, &ee) && ee.Err == nil {
		return ee.Code
	}
	if msg := err.Error(); strings.Contains(msg, "\n") {
		fmt.Fprintf(stderr, "%s: error:\n%s\n", root.Name(), msg)
	} else {
		fmt.Fprintf(stderr, "%s: %s\n", root.Name(), msg)
	}
	var ue UsageError
	if errors.As(err, &ue) {
		return 2
	}
	if errors.As(err, &ee) {
		return ee.Code
	}
	for _, u := range usageErrs {
		if errors.Is(err, u) {
			return 2
		}
	}
	return 1
}

// Version is stamped, the value of a main package's version variable (set at build time
// with -ldflags "-X main.version=v1.2.3"), unless that is still "dev": then the module
// version from the build info when there is one (go install …@v1.2.3), else "dev".
func Version(stamped string) string {
	if stamped != "dev" {
		return stamped
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return stamped
}

// AddVersion gives root both ways of asking for the version: a `--version` flag on root
// itself and the `version` subcommand (VersionCommand). Both print "<name> <version>" to
// stdout and exit 0.
//
// The flag is root's own, not cobra's (Command.Version): cobra prints "<name> version
// <version>", and its other wording needs SetVersionTemplate, whose text/template execution
// makes the linker keep every exported method of every type that meets an interface
// (reflect's MethodByName is then reachable): 11 MB of binary, most of it resident
// (cmd/mqsidecar TestBinaryKeepsDeadCodeElimination).
func AddVersion(root *cobra.Command, stamped string) {
	version := VersionCommand(root.Name(), stamped)
	show := root.Flags().BoolP("version", "v", false, "version for "+root.Name())
	runE := root.RunE
	root.RunE = func(cmd *cobra.Command, args []string) error {
		switch {
		case *show:
			version.Run(cmd, nil) // the subcommand's line, written to root's output
			return nil
		case runE != nil:
			return runE(cmd, args)
		}
		return cmd.Help() // what cobra does for a root that runs nothing
	}
	root.AddCommand(version)
}

// VersionCommand is the `version` subcommand: it prints "<name> <version>".
func VersionCommand(name, stamped string) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), name, Version(stamped))
		},
	}
}

// LogDurations is the ReplaceAttr of the commands' log handlers: a time.Duration is written
// as Go writes it ("168h0m0s", "250ms"), as in the configuration, where the JSON handler
// would write its nanoseconds (604800000000000).
func LogDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}
