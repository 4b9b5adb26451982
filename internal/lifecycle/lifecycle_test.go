package lifecycle

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// Cancelling Run's context calls stop, and Run returns only once stop is over.
func TestRunCancelWaitsForStop(t *testing.T) {
	var l Loop
	quit := make(chan struct{})
	var stopped atomic.Bool
	stop := func() {
		close(quit)
		l.Stop(nil) // as a Close does: waits for the work
		time.Sleep(50 * time.Millisecond)
		stopped.Store(true)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, stop, func() error { <-quit; return nil }) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if !stopped.Load() {
			t.Fatal("Run returned before stop was over")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if err := l.Run(context.Background(), func() {}, func() error { return nil }); !errors.Is(err, ErrRunTwice) {
		t.Fatalf("second Run: %v, want ErrRunTwice", err)
	}
}

// Stop before Run runs final itself, and a later Run does nothing.
func TestStopBeforeRun(t *testing.T) {
	var l Loop
	finals := 0
	l.Stop(func() { finals++ })
	if finals != 1 {
		t.Fatalf("final ran %d times, want 1", finals)
	}
	select {
	case <-l.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	ran := false
	if err := l.Run(context.Background(), func() {}, func() error { ran = true; return nil }); err != nil || ran {
		t.Fatalf("Run after Stop: err %v, work ran %v; want nil and not run", err, ran)
	}
	l.Stop(func() { finals++ })
	if finals != 1 {
		t.Fatal("a second Stop ran final again")
	}
}

// Stop during Run waits for the work; StopWithin gives up when its context ends.
func TestStopWaits(t *testing.T) {
	var l Loop
	quit := make(chan struct{})
	started := make(chan struct{})
	go func() {
		_ = l.Run(context.Background(), func() {}, func() error { close(started); <-quit; return nil })
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.StopWithin(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("StopWithin while the work runs: %v, want DeadlineExceeded", err)
	}
	close(quit)
	l.Stop(nil)
	if err := l.StopWithin(context.Background()); err != nil {
		t.Fatalf("StopWithin after the work: %v", err)
	}
	// The work's error is Run's.
	var l2 Loop
	boom := errors.New("boom")
	if err := l2.Run(context.Background(), func() {}, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Run: %v, want the work's error", err)
	}
}
