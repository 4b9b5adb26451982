package adaptertest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// PublishStream is clients publishing through a Publisher until Stop, the way the publish
// endpoint's clients do: each publishes IDs in turn and retries a publish that failed with
// ErrUnavailable or ErrOutcomeUnknown with the same ID (100 ms apart) until it succeeds.
// The brokers' chaos tests run one while they stop and kill the broker, then Check what
// was consumed.
type PublishStream struct {
	t    *testing.T
	mu   sync.Mutex
	ok   map[string]bool // IDs the publisher confirmed
	sent map[string]bool // IDs attempted
	outs map[string]int  // outcomes: "ok", "outcome-unknown", "unavailable", else the error
	stop atomic.Bool
	wg   sync.WaitGroup
}

// StartPublishStream starts clients goroutines publishing msg(id) through p.
func StartPublishStream(t *testing.T, p adapters.Publisher, clients int, msg func(id string) adapters.OutMessage) *PublishStream {
	s := &PublishStream{t: t, ok: map[string]bool{}, sent: map[string]bool{}, outs: map[string]int{}}
	run := time.Now().UnixNano() % 1e9
	for c := range clients {
		s.wg.Go(func() {
			for i := 0; !s.stop.Load(); i++ {
				id := fmt.Sprintf("%d-c%d-%05d", run, c, i)
				for !s.publish(p, msg(id)) {
					time.Sleep(100 * time.Millisecond) // a client backing off
				}
			}
		})
	}
	return s
}

// publish makes one attempt; false when it is to be retried.
func (s *PublishStream) publish(p adapters.Publisher, m adapters.OutMessage) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := p.Publish(ctx, m)
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent[m.ID] = true
	switch {
	case err == nil:
		s.ok[m.ID] = true
		s.outs["ok"]++
		return true
	case errors.Is(err, adapters.ErrOutcomeUnknown):
		s.outs["outcome-unknown"]++
	case errors.Is(err, adapters.ErrUnavailable):
		s.outs["unavailable"]++
	default:
		s.outs[err.Error()]++
		s.t.Errorf("publish %s: %v (not a retryable class)", m.ID, err)
		return true // give up this ID
	}
	return false
}

// Confirmed is how many IDs the publisher confirmed so far.
func (s *PublishStream) Confirmed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ok)
}

// WaitProgress waits (up to within) until more IDs are confirmed than when it was called.
func (s *PublishStream) WaitProgress(t *testing.T, within time.Duration, what string) {
	t.Helper()
	n := s.Confirmed()
	deadline := time.Now().Add(within)
	for s.Confirmed() <= n+50 {
		if time.Now().After(deadline) {
			s.Stop()
			t.Fatalf("not within %v: %s (%d confirmed, outcomes %v)", within, what, s.Confirmed(), s.outs)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
}

// Stop stops the clients after their current ID and waits for them.
func (s *PublishStream) Stop() {
	s.stop.Store(true)
	s.wg.Wait()
}

// ConfirmedIDs returns a copy of the confirmed IDs (after Stop).
func (s *PublishStream) ConfirmedIDs() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]bool, len(s.ok))
	for id := range s.ok {
		out[id] = true
	}
	return out
}

// Check compares what was consumed (copies per ID) with what was published: every
// confirmed ID consumed (0 lost), no ID consumed that was never published, and some publish
// failed (the disruption happened). Copies, retries of an outcome the client could not
// know, share their ID, which is what the consumer side dedups by; they are counted.
func (s *PublishStream) Check(t *testing.T, consumed map[string]int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	lost, foreign, copies := 0, 0, 0
	for id := range s.ok {
		if consumed[id] == 0 {
			lost++
			if lost <= 10 {
				t.Errorf("confirmed %s was not consumed", id)
			}
		}
	}
	for id, k := range consumed {
		if !s.sent[id] {
			foreign++
			t.Errorf("%s was consumed but never published", id)
		}
		copies += k - 1
	}
	t.Logf("%d confirmed, %d distinct IDs consumed, %d copies of a retried ID (the consumer side removes them by ID), %d lost; outcomes %v",
		len(s.ok), len(consumed), copies, lost, s.outs)
	if lost > 0 || foreign > 0 {
		t.Fatalf("%d confirmed messages lost, %d unknown IDs", lost, foreign)
	}
	if s.outs["outcome-unknown"]+s.outs["unavailable"] == 0 {
		t.Fatal("no publish failed during the broker outages: the disruption did not happen")
	}
}

// PublishWithin publishes m, retrying ErrUnavailable (50 ms apart) for up to within, as a
// test does right after starting a publisher's Run.
func PublishWithin(p adapters.Publisher, m adapters.OutMessage, within time.Duration) (adapters.Receipt, error) {
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := p.Publish(ctx, m)
		cancel()
		if !errors.Is(err, adapters.ErrUnavailable) || time.Now().After(deadline) {
			return r, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// HarnessVerb runs a broker script of e2e/harness (e.g. rabbitmq.sh stop) with the test's
// environment and fails the test when it fails. When the test fails, its cleanup starts the
// broker again for the tests after it.
func HarnessVerb(t *testing.T, script string, args ...string) {
	t.Helper()
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", script, args, err, out)
	}
	t.Logf("%s %v: %v", script, args, time.Since(t0).Round(100*time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			_, _ = exec.CommandContext(ctx, "bash", script, "start").CombinedOutput()
		}
	})
}
