package cli

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func TestExecute(t *testing.T) {
	errConfig := errors.New("bad option")
	for _, tc := range []struct {
		name   string
		args   []string
		err    error
		code   int
		stderr string
	}{
		{"ok", nil, nil, 0, ""},
		{"runtime failure", nil, errors.New("broker gone"), 1, "tool: broker gone\n"},
		{"usage error", nil, Usage(errors.New("missing --config")), 2, "tool: missing --config\n"},
		{"listed usage error", nil, fmt.Errorf("wrapped: %w", errConfig), 2, "tool: wrapped: bad option\n"},
		{"multi-line", nil, Usage(errors.New("a: bad\nb: bad")), 2, "tool: error:\na: bad\nb: bad\n"},
		{"flag error", []string{"--nope"}, nil, 2, "tool: unknown flag: --nope\n"},
		{"exit status", nil, fmt.Errorf("start: %w", ExitError{Code: 3, Err: errors.New("at risk")}), 3, "tool: start: at risk\n"},
		{"silent exit status", nil, ExitError{Code: 3}, 3, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			root := &cobra.Command{Use: "tool", RunE: func(*cobra.Command, []string) error { return tc.err }}
			root.SetOut(&stdout)
			root.SetErr(&stderr)
			if code := Execute(root, tc.args, &stderr, errConfig); code != tc.code || stderr.String() != tc.stderr {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, stderr.String(), tc.code, tc.stderr)
			}
			if stdout.Len() != 0 {
				t.Errorf("nothing belongs on stdout (no usage on errors): %q", stdout.String())
			}
		})
	}
}

func TestVersion(t *testing.T) {
	if got := Version("v1.0.0"); got != "v1.0.0" {
		t.Errorf("Version(v1.0.0) = %q", got)
	}
	if got := Version("dev"); got == "" {
		t.Error("Version(dev) is empty")
	}
	var out bytes.Buffer
	cmd := VersionCommand("tool", "v2.0.0")
	cmd.SetOut(&out)
	cmd.SetArgs(nil)
	if err := cmd.Execute(); err != nil || out.String() != "tool v2.0.0\n" {
		t.Errorf("version command: %v, %q", err, out.String())
	}
}

// TestAddVersion: `tool --version` and `tool version` print the same line.
func TestAddVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		var stdout, stderr bytes.Buffer
		root := &cobra.Command{Use: "tool"}
		AddVersion(root, "v3.0.0")
		root.SetOut(&stdout)
		root.SetErr(&stderr)
		if code := Execute(root, args, &stderr); code != 0 || stdout.String() != "tool v3.0.0\n" || stderr.Len() != 0 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 0, %q", args, code, stdout.String(), stderr.String(), "tool v3.0.0\n")
		}
	}
}

// TestLogDurations: a JSON log line shows a duration as the configuration writes it, also
// inside a group, and leaves other values alone.
func TestLogDurations(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{ReplaceAttr: LogDurations}))
	log.Info("m", "ttl", 168*time.Hour, slog.Group("backoff", "max", 30*time.Second), "n", 5)
	want := `"ttl":"168h0m0s","backoff":{"max":"30s"},"n":5}`
	if !strings.HasSuffix(strings.TrimSpace(buf.String()), want) {
		t.Fatalf("log line %s, want it to end with %s", buf.String(), want)
	}
}
