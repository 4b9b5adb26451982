package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// session is one connection with its consuming channel: one generation. Delivery tags are
// only meaningful on the channel that produced them, so every delivery keeps a pointer to
// its session, and settlements are written by this session's acker or dropped.
//
// Goroutines: a watcher (drains the close and cancel notifications; marks the session dead),
// an acker (writes acks/nacks in settlement order) and, when the source's Events reports
// queue gauges, a depth reader (depth.go). All end after the connection is closed, which
// teardown and shutdown always do.
//
// Lock order: Source.mu before session.mu; neither is held while doing network I/O.
type session struct {
	s    *Source
	gen  uint64
	conn *amqp.Connection
	ch   *amqp.Channel

	dead      chan struct{} // closed once the channel or connection is gone
	deadOnce  sync.Once
	deadErr   error // set before dead is closed
	cancelled atomic.Bool

	mu        sync.Mutex
	ops       []ackOp
	accepting bool   // false once the session died or is shutting down
	tag       string // current consumer tag
	dropped   int    // settlements dropped because the channel was gone

	wake        chan struct{} // cap 1: new ops or stop
	ackerDone   chan struct{}
	watcherDone chan struct{}
	depthDone   chan struct{} // closed when watchDepth ends (at once without QueueGauges)
	closeOnce   sync.Once
}

type ackOp struct {
	tag uint64
	ack bool // false: nack with requeue
}

func newSession(s *Source, gen uint64, conn *amqp.Connection, ch *amqp.Channel) *session {
	ss := &session{
		s:           s,
		gen:         gen,
		conn:        conn,
		ch:          ch,
		dead:        make(chan struct{}),
		accepting:   true,
		wake:        make(chan struct{}, 1),
		ackerDone:   make(chan struct{}),
		watcherDone: make(chan struct{}),
		depthDone:   make(chan struct{}),
	}
	// Buffered and always drained by the watcher: amqp091 blocks its reader goroutine
	// (up to a timeout) on a full notification channel.
	connClose := conn.NotifyClose(make(chan *amqp.Error, 1))
	chClose := ch.NotifyClose(make(chan *amqp.Error, 1))
	cancels := ch.NotifyCancel(make(chan string, 4))
	go ss.watch(connClose, chClose, cancels)
	go ss.ackLoop()
	if g, ok := s.events.(adapters.QueueGauges); ok {
		go ss.watchDepth(g, s.depthInterval)
	} else {
		close(ss.depthDone)
	}
	return ss
}

// watch drains the notification channels until amqp091 closes them (which it does when the
// connection is closed) and marks the session dead on the first close.
func (ss *session) watch(connClose, chClose <-chan *amqp.Error, cancels <-chan string) {
	defer close(ss.watcherDone)
	for connClose != nil || chClose != nil || cancels != nil {
		select {
		case e, ok := <-connClose:
			if !ok {
				connClose = nil
				ss.die(errors.New("connection closed"))
				continue
			}
			ss.die(fmt.Errorf("connection closed by the broker or network: %w", e))
		case e, ok := <-chClose:
			if !ok {
				chClose = nil
				ss.die(errors.New("channel closed"))
				continue
			}
			ss.die(fmt.Errorf("channel closed by the broker: %w", e))
		case tag, ok := <-cancels:
			if !ok {
				cancels = nil
				continue
			}
			ss.cancelled.Store(true)
			ss.s.log.Debug("rabbitmq: basic.cancel from the broker", slog.String("consumer_tag", tag))
		}
	}
}

// die marks the session dead: its channel can no longer acknowledge anything.
func (ss *session) die(err error) {
	ss.deadOnce.Do(func() {
		ss.deadErr = err
		ss.mu.Lock()
		ss.accepting = false
		ss.mu.Unlock()
		close(ss.dead)
	})
}

func (ss *session) isDead() bool {
	select {
	case <-ss.dead:
		return true
	default:
		return false
	}
}

// err is the cause of death, or nil while alive.
func (ss *session) err() error {
	if !ss.isDead() {
		return nil
	}
	return ss.deadErr
}

func (ss *session) setTag(tag string) {
	ss.mu.Lock()
	ss.tag = tag
	ss.mu.Unlock()
}

// alive reports whether settlements can still be written on this session.
func (ss *session) alive() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.accepting && !ss.s.killed.Load()
}

// enqueue queues a settlement for the acker; false means the session no longer accepts
// any (dead, or shutting down) and the settlement is dropped.
func (ss *session) enqueue(op ackOp) bool {
	ss.mu.Lock()
	if !ss.accepting {
		ss.dropped++
		ss.mu.Unlock()
		return false
	}
	ss.ops = append(ss.ops, op)
	ss.mu.Unlock()
	select {
	case ss.wake <- struct{}{}:
	default:
	}
	return true
}

// stopAccepting makes later settlements drop, and lets the acker finish what is queued.
func (ss *session) stopAccepting() {
	ss.mu.Lock()
	ss.accepting = false
	ss.mu.Unlock()
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// ackLoop writes queued settlements in order. The queue is bounded by prefetch: each
// delivery of this channel settles at most once. It exits once the session stopped
// accepting and the queue is empty.
func (ss *session) ackLoop() {
	defer close(ss.ackerDone)
	for {
		ss.mu.Lock()
		batch := ss.ops
		ss.ops = nil
		open := ss.accepting
		ss.mu.Unlock()
		for i, op := range batch {
			if ss.isDead() || ss.s.killed.Load() {
				ss.drop(len(batch) - i)
				break
			}
			var err error
			if op.ack {
				err = ss.ch.Ack(op.tag, false)
			} else {
				err = ss.ch.Nack(op.tag, false, true)
			}
			if err != nil {
				// Only fails when the channel is closed; the broker requeued the rest.
				ss.drop(len(batch) - i)
				ss.die(fmt.Errorf("writing acknowledgement: %w", err))
				break
			}
		}
		if len(batch) > 0 {
			continue
		}
		if !open {
			return
		}
		select {
		case <-ss.wake:
		case <-ss.dead:
		}
	}
}

func (ss *session) drop(n int) {
	ss.mu.Lock()
	ss.dropped += n
	ss.mu.Unlock()
	for range n {
		ss.s.event(EventStaleSettle)
	}
}

// teardown closes a session without flushing (it is dead, or the source gave up on it)
// and waits, bounded, for its goroutines.
func (ss *session) teardown(s *Source) {
	ss.die(errors.New("torn down"))
	ss.closeConn(time.Now().Add(closeGrace))
	ss.waitGoroutines(time.Now().Add(closeGrace))
	s.mu.Lock()
	if s.cur == ss {
		s.cur = nil
	}
	s.mu.Unlock()
	ss.reportDropped()
}

// shutdown is the clean stop of Close: cancel the consumer, flush queued settlements,
// close channel and connection. ctx bounds the whole; past it the connection is closed at
// once (unflushed settlements are then redelivered, which is safe).
func (ss *session) shutdown(ctx context.Context) error {
	var errs []error
	if !ss.isDead() && !ss.s.killed.Load() {
		ss.mu.Lock()
		tag := ss.tag
		ss.mu.Unlock()
		if tag != "" {
			if err := ss.bounded(ctx, func() error { return ss.ch.Cancel(tag, false) }); err != nil && !ss.isDead() {
				errs = append(errs, fmt.Errorf("rabbitmq: close: cancel consumer: %w", err))
			}
		}
		ss.stopAccepting()
		select {
		case <-ss.ackerDone:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("rabbitmq: close: flushing acknowledgements: %w", ctx.Err()))
		}
		// channel.close-ok proves the broker processed every ack sent before it.
		if err := ss.bounded(ctx, ss.ch.Close); err != nil && !ss.isDead() {
			errs = append(errs, fmt.Errorf("rabbitmq: close: channel: %w", err))
		}
	}
	ss.die(errors.New("closed"))
	deadline := time.Now().Add(closeGrace)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ss.closeConn(deadline)
	ss.waitGoroutines(deadline.Add(time.Second))
	ss.reportDropped()
	return errors.Join(errs...)
}

// bounded runs a blocking amqp091 call, giving up when ctx ends or the session dies (the
// call itself then returns once the connection is closed).
func (ss *session) bounded(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-ss.dead:
		return ss.deadErr
	}
}

func (ss *session) closeConn(deadline time.Time) {
	ss.closeOnce.Do(func() {
		if err := ss.conn.CloseDeadline(deadline); err != nil && !errors.Is(err, amqp.ErrClosed) {
			ss.s.log.Debug("rabbitmq: closing connection", slog.String("error", err.Error()))
		}
	})
}

func (ss *session) waitGoroutines(deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for _, done := range []chan struct{}{ss.ackerDone, ss.watcherDone, ss.depthDone} {
		select {
		case <-done:
		case <-t.C:
			ss.s.log.Warn("rabbitmq: connection goroutines did not stop in time", slog.Uint64("generation", ss.gen))
			return
		}
	}
}

func (ss *session) reportDropped() {
	ss.mu.Lock()
	n := ss.dropped
	ss.dropped = 0
	ss.mu.Unlock()
	if n > 0 {
		ss.s.log.Warn("rabbitmq: settlements dropped because their channel closed; the broker redelivers those messages",
			slog.Int("count", n), slog.Uint64("generation", ss.gen))
	}
}
