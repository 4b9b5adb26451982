// Package lifecycle holds the one lifecycle style of mqsidecar's long-lived parts: the
// adapters' loops, the dedup stores' writers, the admin server, the durability runner and
// the ack gate.
//
//   - A constructor validates, opens what must fail early (a file lock, a listener) and
//     starts no goroutine.
//   - Run(ctx) error does the part's background work on the caller's goroutine. It returns
//     nil once ctx is done or the part was closed, and an error only when the work failed
//     and cannot go on. It runs at most once.
//   - Close (where a part has one) is the orderly stop: it flushes what the part holds and
//     releases it. It may be called before, during or after Run; called before Run, it
//     never waits for a Run that will not come, and a later Run returns at once.
//   - Cancelling Run's ctx stops the part as its Close does, and Run returns once that
//     close is over. A caller that needs an order between parts (the drain) calls their
//     Close in that order and cancels the context after.
//
// The wiring (package sidecar) runs every part's Run under one errgroup and stops them in
// the drain order of docs/guarantees.md (G5).
//
// Loop is the guard a part embeds to keep these rules.
package lifecycle

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ErrRunTwice is returned by Run when the loop already ran.
var ErrRunTwice = errors.New("lifecycle: Run called more than once")

// Loop guards the background work of one part. The zero value is ready to use.
type Loop struct {
	once    sync.Once
	claimed atomic.Bool
	ran     atomic.Bool
	done    chan struct{}
}

func (l *Loop) init() { l.once.Do(func() { l.done = make(chan struct{}) }) }

// Run runs work on the caller's goroutine unless the loop already ran or was stopped
// first (then it returns nil at once, or ErrRunTwice when it already ran). stop (the
// part's Close) is called when ctx is done while work runs: it must make work return, and
// Run returns once both are over.
func (l *Loop) Run(ctx context.Context, stop func(), work func() error) error {
	l.init()
	if !l.claimed.CompareAndSwap(false, true) {
		if l.ran.Load() {
			return ErrRunTwice
		}
		return nil // stopped before it ran
	}
	l.ran.Store(true)
	stopped := make(chan struct{})
	unwatch := context.AfterFunc(ctx, func() { stop(); close(stopped) })
	err := work()
	close(l.done) // before waiting: stop waits for it (Stop)
	if !unwatch() {
		<-stopped // ctx ended: the close it started finishes first
	}
	return err
}

// CloseWithin returns a stop function for Run that calls closeFn with a context of d.
func CloseWithin(d time.Duration, closeFn func(context.Context) error) func() {
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_ = closeFn(ctx)
	}
}

// Stop is called by the part's Close after it told the work to return: it waits until
// Run's work returned. When Run never started, it claims the loop so that a later Run does
// nothing, calls final (when not nil: the work that must happen even so, such as
// committing what was queued) on the caller's goroutine, and returns.
func (l *Loop) Stop(final func()) {
	l.init()
	if l.claimed.CompareAndSwap(false, true) {
		if final != nil {
			final()
		}
		close(l.done)
		return
	}
	<-l.done
}

// StopWithin is Stop without final, waiting at most until ctx ends (then it returns ctx's
// error).
func (l *Loop) StopWithin(ctx context.Context) error {
	l.init()
	if l.claimed.CompareAndSwap(false, true) {
		close(l.done)
		return nil
	}
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done is closed once Run's work returned, or Stop claimed a loop that never ran.
func (l *Loop) Done() <-chan struct{} {
	l.init()
	return l.done
}
