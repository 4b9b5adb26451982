package durability

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// Runner runs the checks in the background of a running sidecar: once at start, then every
// interval. It logs one line per verdict change of a (check, target) — and one when the
// broker cannot be checked, and when it can again —, keeps the gauge (1 ok, 0 at risk or
// unknown; a series of a check that is no longer reported is deleted) and the /readyz
// details (Details). It never touches consumption.
type Runner struct {
	check    func(context.Context) (Report, error)
	interval time.Duration
	log      *slog.Logger
	gauge    *prometheus.GaugeVec

	mu       sync.Mutex
	verdicts map[[2]string]adapters.Verdict // (check, target) → last verdict
	last     *Report                        // nil until a check completed
	lastErr  error                          // the last check's failure, nil after a success
}

// NewRunner returns a runner of check every interval (0 = once), logging to log and setting
// gauge (may be nil).
func NewRunner(check func(context.Context) (Report, error), interval time.Duration, log *slog.Logger, gauge *prometheus.GaugeVec) *Runner {
	return &Runner{check: check, interval: interval, log: log, gauge: gauge, verdicts: map[[2]string]adapters.Verdict{}}
}

// Run checks at once, then every interval, until ctx ends (the lifecycle of
// internal/lifecycle; NewRunner starts nothing). A check that fails (broker unreachable)
// is retried after min(interval, 30 s) so the verdict is known soon after the broker is.
// It returns nil: a failed check is a verdict, not an end.
func (r *Runner) Run(ctx context.Context) error { r.loop(ctx, true); return nil }

// Continue is Run after a check that just completed (Require): it waits an interval first.
func (r *Runner) Continue(ctx context.Context) error { r.loop(ctx, false); return nil }

func (r *Runner) loop(ctx context.Context, now bool) {
	for {
		var err error
		if now {
			_, err = r.Once(ctx)
		}
		now = true
		wait := r.interval
		if err != nil && (wait == 0 || wait > 30*time.Second) {
			wait = 30 * time.Second
		}
		if wait == 0 || ctx.Err() != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Once runs the check one time and records its result (logs, gauge, details).
func (r *Runner) Once(ctx context.Context) (Report, error) {
	rep, err := r.check(ctx)
	if ctx.Err() != nil && err != nil {
		return rep, err // stopping: nothing to record
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		if r.lastErr == nil {
			r.log.Warn("broker durability: cannot check", "kind", rep.Kind, "error", err)
		}
		r.lastErr = err
		return rep, err
	}
	if r.lastErr != nil {
		r.log.Info("broker durability: checking again", "kind", rep.Kind)
	}
	r.lastErr = nil
	seen := map[[2]string]bool{}
	for _, c := range rep.Checks {
		k := [2]string{c.Check, c.Target}
		seen[k] = true
		if r.gauge != nil {
			v := 0.0
			if c.Verdict == adapters.VerdictOK {
				v = 1
			}
			r.gauge.WithLabelValues(c.Check, c.Target).Set(v)
		}
		if prev, ok := r.verdicts[k]; ok && prev == c.Verdict {
			continue
		}
		r.verdicts[k] = c.Verdict
		attrs := []any{"check", c.Check, "target", c.Target, "value", c.Value, "source", c.Source, "verdict", string(c.Verdict)}
		if c.Fix != "" {
			attrs = append(attrs, "fix", c.Fix)
		}
		if c.Verdict == adapters.VerdictOK {
			r.log.Info("broker durability", attrs...)
		} else {
			r.log.Warn("broker durability", attrs...)
		}
	}
	for k := range r.verdicts {
		if !seen[k] {
			delete(r.verdicts, k)
			if r.gauge != nil {
				r.gauge.DeleteLabelValues(k[0], k[1])
			}
		}
	}
	r.last = &rep
	return rep, nil
}

// Details is the durability line of /readyz: "durability: not checked yet", "durability:
// cannot check: <why>", "durability: ok (n checks)" or "durability: at risk: <check>
// <target>=<value>, ...". Readiness does not depend on it.
func (r *Runner) Details() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.lastErr != nil:
		return "durability: cannot check: " + r.lastErr.Error()
	case r.last == nil:
		return "durability: not checked yet"
	}
	var bad []string
	for _, c := range r.last.Checks {
		if c.Verdict != adapters.VerdictOK {
			bad = append(bad, fmt.Sprintf("%s %s=%s (%s)", c.Check, c.Target, dash(c.Value), c.Verdict))
		}
	}
	if len(bad) == 0 {
		return fmt.Sprintf("durability: ok (%d checks)", len(r.last.Checks))
	}
	return fmt.Sprintf("durability: %s: %s (mqsidecar doctor shows the fixes)", r.last.Verdict(), strings.Join(bad, ", "))
}

// ErrAtRisk is returned by Require when the broker is at risk (or not verified).
var ErrAtRisk = errors.New("broker durability at risk")

// Require runs the check until it completes (a broker unreachable at start is retried,
// 1 s doubling to 30 s, as the adapters retry) and returns nil when every check is ok, an
// error wrapping ErrAtRisk otherwise, or ctx's error.
func (r *Runner) Require(ctx context.Context) error {
	for delay := time.Second; ; delay = min(2*delay, 30*time.Second) {
		rep, err := r.Once(ctx)
		if err == nil {
			if rep.ExitCode() == ExitOK {
				return nil
			}
			return fmt.Errorf("%w: %s; durability.require is true (`mqsidecar doctor` shows each check and its fix)", ErrAtRisk, rep.Summary())
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrConfig) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}
