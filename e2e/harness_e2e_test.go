//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// brokerEnv returns the broker address in the environment variable name. Without it the
// test is skipped, or fails under CI=true (a broker that did not start must not pass as a
// skip).
func brokerEnv(t *testing.T, name, script string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		msg := fmt.Sprintf("%s is not set: start the broker with e2e/harness/%s start and eval \"$(e2e/harness/%s env)\"", name, script, script)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return v
}

// harnessDir is where the broker scripts live: $MQSIDECAR_E2E_HARNESS (printed by all.sh
// env) or e2e/harness next to this package.
func harnessDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("MQSIDECAR_E2E_HARNESS"); d != "" {
		return d
	}
	d, err := filepath.Abs("harness")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// harness runs e2e/harness/<script> args... with the test's environment (so the broker it
// controls is the one the MQSIDECAR_E2E_* variables describe) and returns its output.
func harness(t testing.TB, timeout time.Duration, script string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(harnessDir(t), script)}, args...)...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s %s: still running after %s", script, strings.Join(args, " "), timeout)
	} else if err != nil {
		err = fmt.Errorf("%s %s: %w", script, strings.Join(args, " "), err)
	}
	return string(out), err
}

// uniqueName is a topic/queue/group name unique to this run.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1_000_000_000)
}

// harnessVerb runs a harness verb (start, stop, restart --hard, ...) and fails the test on
// error.
func harnessVerb(t *testing.T, script string, args ...string) {
	t.Helper()
	t0 := time.Now()
	out, err := harness(t, 4*time.Minute, script, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("%s %s: %s", script, strings.Join(args, " "), time.Since(t0).Round(100*time.Millisecond))
}

// stopStart is a bounce for runBrokerRestart: the harness's stop verb (a graceful broker
// shutdown), then start once the sidecar's /readyz has turned false. Waiting for that keeps
// the down window longer than the sidecar's health-check interval; the restart verb can be
// faster than that on a quiet machine, which would make the readiness check a coin toss.
// If the test fails while the broker is down, a cleanup starts it again for the next test.
func stopStart(t *testing.T, script string) func(p *sidecarProc, tail func() string) {
	return func(p *sidecarProc, tail func() string) {
		started := false
		t.Cleanup(func() {
			if !started {
				if out, err := harness(t, 4*time.Minute, script, "start"); err != nil {
					t.Logf("cleanup: %v\n%s", err, out)
				}
			}
		})
		harnessVerb(t, script, "stop")
		waitFor(t, time.Minute, "/readyz to turn false while the broker is down", func() (bool, string) {
			ok, why := p.readyz()
			return !ok, why
		}, tail)
		harnessVerb(t, script, "start")
		started = true
	}
}
