// Package lifecycletest starts a part's Run (see package lifecycle) for a test.
package lifecycletest

import (
	"context"
	"testing"
	"time"
)

// Start runs run on its own goroutine until the test ends; then it cancels run's context
// and fails the test when run does not return nil within 30 s. Cleanups registered before
// Start run after this one (t.Cleanup is last in, first out).
func Start(tb testing.TB, run func(context.Context) error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			tb.Errorf("Run did not return within 30s of its context's end")
		}
	})
}
