// Package ackgate is the delivery engine and the only place the guarantees of docs/guarantees.md live. It
// reads deliveries from an adapters.Source, pushes each to the app over HTTP, classifies the
// answer, retries, dead-letters, and finally settles the delivery so the adapter can
// acknowledge it to the broker.
//
// The order of effects for one message (G1, G2):
//
//  1. admission: one of 4×max_inflight admission permits is taken (the memory bound: read
//     from the broker and not yet settled), and the delivery's bytes must fit the byte
//     budget (Options.MaxBytes; a delivery larger than the budget is admitted alone, when
//     nothing else is admitted, never refused); a second copy of an ID already admitted
//     waits behind the first (two copies are never pushed concurrently);
//  2. one store transaction reads the ID's record and, unless it is completed, records
//     the ID "in flight" (fsynced by group commit) before its first push, so a crash after
//     the push makes the redelivery carry ce-redelivered; an ID the store knows as
//     completed is settled without a push when its lane reaches it;
//  3. push (at most max_inflight at once), retry with backoff, or dead-letter
//     (broker-confirmed) as the answer says;
//  4. on success the ID is recorded "completed" (fsynced), and only then the delivery is
//     settled (acknowledged to the broker);
//  5. the permit is returned.
//
// Ordering (G3): deliveries are processed in lanes. Within a lane pushes are strictly
// sequential in admission order; lanes run concurrently. Ordering "partition" uses the
// adapter's Lane (a Kafka partition), "key" the Lane plus the message key (a message without
// a key keeps its partition's order), "none" gives every delivery its own lane. A lane moves
// to its next message once the app answered 2xx; recording and settlement follow
// asynchronously, so the fsync is not on the lane's critical path.
//
// Shutdown (G5): when Run's context is cancelled the gate stops reading, lets pushes that
// are on the wire finish (bounded by DrainTimeout), abandons everything else (settled with
// adapters.ErrNotDone, so the broker redelivers it), and returns once every admitted
// delivery is settled.
package ackgate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/metrics"
)

// admissionFactor × max_inflight deliveries may be admitted (read and not yet settled)
// while at most max_inflight are pushed. The others are being recorded in flight before
// their push or completed after it: at high rates each spends about two group-commit
// cycles (a few milliseconds) outside the push, and the deeper the pipeline, the larger
// and fewer the commits. Measured on the partition bench (8 partitions, instant app): 2×
// kept 64 pushes busy at ~22k msg/s, 4× at ~26k with less CPU per message; 6× gained
// nothing more.
const admissionFactor = 4

// Ordering selects how deliveries are grouped into sequential lanes.
type Ordering string

// Ordering modes (G3 in docs/guarantees.md).
const (
	OrderPartition Ordering = "partition"
	OrderKey       Ordering = "key"
	OrderNone      Ordering = "none"
)

// Backoff is exponential backoff with full jitter.
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
}

// Delay returns the wait before retry number n (1 = the first retry): a uniformly random
// duration in [0, min(Max, Initial*Multiplier^(n-1))] ("full jitter"), so that many
// sidecars retrying one struggling app spread out instead of arriving in waves.
func (b Backoff) Delay(n int) time.Duration {
	ceil := float64(b.Initial)
	for i := 1; i < n && ceil < float64(b.Max); i++ {
		ceil *= b.Multiplier
	}
	if ceil > float64(b.Max) {
		ceil = float64(b.Max)
	}
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// Options configures a Gate.
type Options struct {
	Push        PushOptions
	Ordering    Ordering
	MaxInflight int
	// MaxAttempts is the number of pushes after which a message is dead-lettered (or
	// dropped when DropAfterMaxAttempts); 0 = unlimited.
	MaxAttempts          int
	DropAfterMaxAttempts bool
	Backoff              Backoff
	// DeadLetter reports whether the source has a dead-letter target.
	DeadLetter bool
	// LaneLookahead bounds the deliveries of one source lane (a Kafka partition) admitted
	// and not yet settled, so a lane parked on a failing message cannot take every
	// in-flight slot; the rest of that lane waits in the broker. Only sources that
	// implement adapters.LaneLimiter can be held back. 0 = max(1, MaxInflight/2).
	LaneLookahead int
	// MaxBytes bounds the bytes (adapters.Delivery.Size) of the deliveries admitted and not
	// yet settled: a delivery is admitted only while the admitted bytes plus its own stay
	// within MaxBytes, except that one larger than MaxBytes is admitted alone when nothing
	// else is admitted (never a deadlock). One source lane may hold at most its share of
	// it (MaxBytes divided among the lanes with deliveries admitted, at most half), so a
	// few lanes, or one parked on a failing message, cannot take the whole budget (see
	// laneByteShare). 0 = no byte bound.
	// The sidecar gives the gate half of delivery.max_buffer_bytes, the adapter the other.
	MaxBytes int64
	// DrainTimeout bounds how long pushes on the wire may take to finish at shutdown.
	DrainTimeout time.Duration
	Logger       *slog.Logger
	Metrics      *metrics.Metrics
	// Tracing records spans of each delivery and push (trace.go); zero = none.
	Tracing Tracing
	// Topics are the topics or queues the configuration names, the values of the delivery
	// counters' topic label (topics.go); empty = whatever the deliveries name.
	Topics []string
	// AppReachable, when set, hears whether pushes reach the app, on each change (the
	// caller owns mqsidecar_app_ready).
	AppReachable func(up bool)
}

// Store is what the gate needs of the dedup store (*dedup.Store implements it). A nil Store
// disables deduplication; in-flight duplicates are still never pushed concurrently.
type Store interface {
	Update(id string, f func(prior dedup.Entry) (next dedup.Entry, write bool), done func(prior dedup.Entry, err error))
	Put(id string, e dedup.Entry, done func(error))
}

// flusher is implemented by a store that lingers to batch its writes (*dedup.Store): Flush
// asks it to commit what is queued now, because a caller waits for it.
type flusher interface{ Flush() }

// ErrStore wraps a dedup store failure; Run returns it and the process should exit without
// acknowledging anything further (nothing is lost: unacknowledged messages are redelivered).
var ErrStore = errors.New("dedup store failed")

// Gate is the delivery engine. Create it with New and call Run once.
type Gate struct {
	opts   Options
	src    adapters.Source
	store  Store
	pusher *Pusher
	log    *slog.Logger
	m      *metrics.Metrics
	tracer *tracer // nil: tracing off
	topics topics  // the delivery counters by source (topics.go)
	flush  func()  // the store's Flush, or nothing

	permits   chan struct{}  // admission: admissionFactor×MaxInflight
	pushSlots chan struct{}  // concurrent pushes: MaxInflight
	inflight  sync.WaitGroup // one per admitted delivery, done when settled

	// stopping is closed when the drain starts: no new push starts, waits end.
	stopping chan struct{}
	// hardCtx is cancelled when the drain timeout expires: pushes on the wire are cut.
	hardCtx    context.Context
	hardCancel context.CancelFunc

	mu     sync.Mutex
	lanes  map[string]*lane
	active map[string][]*item // ID → copies admitted after the one being processed
	fatal  error

	appDown      atomic.Bool
	headerLogged atomic.Int64 // unix nanos of the last invalid-header log line
	inflightN    atomic.Int64

	// laneMu guards laneCount, laneBytes, admittedBytes and parkedSince. It is a leaf
	// lock: the source calls laneFull while holding its own lock.
	laneMu        sync.Mutex
	laneCount     map[string]int   // source lane → admitted, unsettled
	laneBytes     map[string]int64 // source lane → bytes admitted, unsettled (MaxBytes > 0)
	admittedBytes int64            // bytes of all admitted, unsettled deliveries
	// bytesFreed wakes the read loop waiting for the byte budget (see admitBytes).
	bytesFreed  chan struct{}
	parkedSince map[*item]time.Time
	limiter     adapters.LaneLimiter
}

type lane struct {
	queue   []*item
	running bool
}

// item is one admitted delivery and what the gate knows of it.
type item struct {
	d           *adapters.Delivery
	key         string      // dedup key: the ID, hashed when too long for the store
	prior       dedup.Entry // store state at admission
	baseAttempt int         // pushes made before this admission (persisted, or the broker's count)
	counted     int         // the attempts the record counts: pushes started, or about to be
	redelivered bool
	wrote       bool       // this admission wrote the in-flight mark (set on the store's writer)
	marked      chan error // receives the result of the durable in-flight record
	size        int64      // d.Size(), charged to the byte budget at admission
	pushes      int        // pushes made by this admission
	trace       itemTrace  // its consumer span (trace.go)
	mc          *metrics.TopicCounters
}

// elsewhereWait is how often a message that another live replica holds in flight (a shared
// store reported it Elsewhere) is looked up again: until that replica completes it (then it
// is a recorded duplicate) or its lease ends (then it is pushed, flagged as redelivered).
const elsewhereWait = 200 * time.Millisecond

// New returns a Gate reading from src. store may be nil (dedup disabled).
func New(src adapters.Source, store Store, opts Options) *Gate {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	if opts.MaxInflight < 1 {
		opts.MaxInflight = 1
	}
	if opts.Push.Conns == 0 {
		opts.Push.Conns = opts.MaxInflight
	}
	if opts.AppReachable == nil {
		opts.AppReachable = func(bool) {}
	}
	if opts.LaneLookahead <= 0 {
		opts.LaneLookahead = max(1, opts.MaxInflight/2)
	}
	hardCtx, hardCancel := context.WithCancel(context.Background())
	g := &Gate{
		opts: opts, src: src, store: store, log: opts.Logger, m: opts.Metrics, tracer: newTracer(opts),
		permits:     make(chan struct{}, admissionFactor*opts.MaxInflight),
		pushSlots:   make(chan struct{}, opts.MaxInflight),
		stopping:    make(chan struct{}),
		hardCtx:     hardCtx,
		hardCancel:  hardCancel,
		lanes:       map[string]*lane{},
		active:      map[string][]*item{},
		laneCount:   map[string]int{},
		laneBytes:   map[string]int64{},
		bytesFreed:  make(chan struct{}, 1),
		parkedSince: map[*item]time.Time{},
	}
	g.flush = func() {}
	if f, ok := store.(flusher); ok {
		g.flush = f.Flush
	}
	if ll, ok := src.(adapters.LaneLimiter); ok {
		g.limiter = ll
		ll.LimitLanes(g.laneFull)
	}
	opts.Push.TraceContext = g.tracer != nil
	g.pusher = NewPusher(opts.Push, g.invalidHeader)
	g.topics = newTopics(opts.Topics, g.m)
	return g
}

// Run reads and delivers until ctx is cancelled or a fatal error occurs (the source failed,
// or the store failed), then drains as described in the package doc. It returns nil after a
// clean drain, or the fatal error. Run does not close the source or the store.
func (g *Gate) Run(ctx context.Context) error {
	defer g.pusher.Close()
	stopGauges := g.reportParked()
	defer stopGauges()
	readErr := g.readLoop(ctx)
	g.drain()
	g.mu.Lock()
	fatal := g.fatal
	g.mu.Unlock()
	if fatal != nil {
		return fatal
	}
	return readErr
}

func (g *Gate) readLoop(ctx context.Context) error {
	// A store failure stops reading as a shutdown does.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-g.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		select {
		case g.permits <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		d, err := g.src.Read(ctx)
		if err != nil {
			<-g.permits
			if ctx.Err() != nil || errors.Is(err, adapters.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read: %w", err)
		}
		size, ok := g.admitBytes(ctx, d)
		if !ok {
			// Stopping, or fenced, while it waited for the budget: never admitted, not
			// done; the broker redelivers it.
			d.Settle(adapters.ErrNotDone)
			<-g.permits
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		g.admit(d, size)
	}
}

// admitBytes waits until d fits the byte budget (Options.MaxBytes) and charges its size:
// until the admitted bytes plus d's stay within the budget, or nothing else is admitted
// (a delivery larger than the whole budget then goes alone). It returns false when ctx
// ended or d was fenced first (its revoke need not wait for the budget).
func (g *Gate) admitBytes(ctx context.Context, d *adapters.Delivery) (int64, bool) {
	size := d.Size()
	for {
		g.laneMu.Lock()
		if g.opts.MaxBytes <= 0 || g.admittedBytes == 0 || g.admittedBytes+size <= g.opts.MaxBytes {
			g.admittedBytes += size
			if d.Lane != "" {
				g.laneBytes[d.Lane] += size
			}
			g.laneMu.Unlock()
			return size, true
		}
		g.laneMu.Unlock()
		select {
		case <-g.bytesFreed:
		case <-ctx.Done():
			return 0, false
		case <-d.Fenced: // nil: never
			return 0, false
		}
	}
}

// drain implements the shutdown described in the package doc.
func (g *Gate) drain() {
	g.stop(nil)
	done := make(chan struct{})
	go func() { g.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(g.opts.DrainTimeout):
		g.log.Warn("drain timeout: cancelling pushes still on the wire", "timeout", g.opts.DrainTimeout, "inflight", g.inflightN.Load())
		g.hardCancel()
		select {
		case <-done:
		case <-time.After(storeGrace):
			// What is left waits for the store to record its completion (a Redis that
			// is down): it stays unacknowledged, and the broker redelivers it.
			g.log.Warn("stopping with deliveries still waiting for the dedup store; they stay unacknowledged", "inflight", g.inflightN.Load())
		}
	}
	g.hardCancel()
}

// storeGrace bounds how long the drain waits, after its timeout, for deliveries whose
// completion the store has not confirmed yet.
const storeGrace = 5 * time.Second

// stop begins the drain once; err, when non-nil, is recorded as the fatal cause.
func (g *Gate) stop(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil && g.fatal == nil {
		g.fatal = err
	}
	select {
	case <-g.stopping:
	default:
		close(g.stopping)
	}
}

func (g *Gate) isStopping() bool {
	select {
	case <-g.stopping:
		return true
	default:
		return false
	}
}

// invalidHeader counts a message header that was not forwarded, and says so in the log at
// most once a minute (never once per message).
func (g *Gate) invalidHeader(name string) {
	g.m.InvalidHeaders.Inc()
	now := time.Now().UnixNano()
	last := g.headerLogged.Load()
	if now-last < int64(time.Minute) || !g.headerLogged.CompareAndSwap(last, now) {
		return
	}
	if len(name) > 64 {
		name = name[:64] + "…"
	}
	g.log.Warn("message headers not forwarded: invalid HTTP or reserved (counted in mqsidecar_invalid_headers_total; logged at most once a minute)",
		"example", strconv.QuoteToASCII(name))
}

// laneFull is the LaneLimiter predicate: lane has LaneLookahead deliveries admitted, or
// its share of the byte budget (laneByteShare; a lane with nothing admitted is never full).
func (g *Gate) laneFull(lane string) bool {
	g.laneMu.Lock()
	defer g.laneMu.Unlock()
	return g.laneFullLocked(lane)
}

func (g *Gate) laneFullLocked(lane string) bool {
	return g.laneCount[lane] >= g.opts.LaneLookahead ||
		g.opts.MaxBytes > 0 && g.laneBytes[lane] >= g.laneByteShare()
}

// laneByteShare is the bytes one source lane may have admitted: the byte budget divided
// among the lanes that have deliveries admitted, and at most half of it. Without it a few
// lanes whose records arrived first (or one parked on a failing message) would take the
// whole budget and the others would idle until they drain; a lane with nothing admitted
// is not counted, so lanes with nothing to do leave their share to the others. Called
// with laneMu held.
func (g *Gate) laneByteShare() int64 {
	return max(1, g.opts.MaxBytes/int64(max(2, len(g.laneBytes))))
}

// admit takes ownership of d (a permit is held and its size charged to the byte budget).
// Called from the read loop only.
func (g *Gate) admit(d *adapters.Delivery, size int64) {
	if d.Lane != "" {
		g.laneMu.Lock()
		g.laneCount[d.Lane]++
		g.laneMu.Unlock()
	}
	g.inflight.Add(1)
	g.m.Inflight.Set(float64(g.inflightN.Add(1)))
	it := &item{d: d, key: storeKey(d.ID), marked: make(chan error, 1), size: size, mc: g.topics.of(d)}
	it.mc.Received.Inc()
	g.startDelivery(it)
	g.mu.Lock()
	if waiting, ok := g.active[it.key]; ok {
		// Another copy is being processed: this one waits, and is looked at again once
		// that copy is settled (it will most likely be a recorded duplicate by then).
		g.active[it.key] = append(waiting, it)
		g.mu.Unlock()
		return
	}
	g.active[it.key] = nil
	g.mu.Unlock()
	g.begin(it)
}

// begin records it in flight (unless the store knows it as completed) and hands it to its
// lane, which waits for the record to be durable. The ID is marked active by the caller.
func (g *Gate) begin(it *item) {
	d := it.d
	it.baseAttempt = d.DeliveryCount
	it.redelivered = d.Redelivered || d.DeliveryCount > 0
	if g.store == nil {
		it.marked <- nil
		g.enqueue(it)
		return
	}
	g.mark(it)
	g.enqueue(it)
}

// mark runs the admission's store transaction: it reads the ID's record and writes the
// in-flight mark, unless the ID is completed or held in flight by another live replica
// (the lane then waits, see process). f runs on the store's writer before the result
// reaches it.marked, and the lane reads what f sets only after that.
func (g *Gate) mark(it *item) {
	g.store.Update(it.key, func(prior dedup.Entry) (dedup.Entry, bool) {
		it.prior = prior
		if prior.State == dedup.Completed || prior.Elsewhere {
			return prior, false // a recorded duplicate, or not ours to push yet
		}
		it.baseAttempt = max(it.d.DeliveryCount, prior.Attempts)
		it.redelivered = it.d.Redelivered || it.d.DeliveryCount > 0 || prior.State == dedup.InFlight
		it.wrote = true
		// Attempts counts pushes started, recorded before each push (see process).
		if prior.State == dedup.InFlight && time.Until(prior.NextAttempt) > 0 {
			// A retry scheduled by a previous run: not due yet, so the record keeps saying
			// so; the push is counted when it is due.
			it.counted = it.baseAttempt
			return dedup.Entry{State: dedup.InFlight, Attempts: it.baseAttempt, NextAttempt: prior.NextAttempt}, true
		}
		// Recorded as if the first push had started: a crash before the push only makes
		// the redelivery over-cautious (ce-redelivered, one attempt counted too many),
		// never silent.
		it.counted = it.baseAttempt + 1
		return dedup.Entry{State: dedup.InFlight, Attempts: it.counted}, true
	}, func(_ dedup.Entry, err error) {
		it.marked <- err
	})
}

func (g *Gate) laneKey(d *adapters.Delivery) string {
	switch {
	case d.Lane == "" || g.opts.Ordering == OrderNone:
		return ""
	case g.opts.Ordering == OrderKey && d.Key != "":
		return d.Lane + "\x00" + d.Key
	default:
		return d.Lane
	}
}

func (g *Gate) enqueue(it *item) {
	key := g.laneKey(it.d)
	if key == "" {
		go g.process(it)
		return
	}
	g.mu.Lock()
	l := g.lanes[key]
	if l == nil {
		l = &lane{}
		g.lanes[key] = l
	}
	l.queue = append(l.queue, it)
	start := !l.running
	l.running = true
	g.mu.Unlock()
	if start {
		go g.runLane(key, l)
	}
}

// runLane processes a lane's queue in order and exits when it is empty, so idle keys cost
// nothing.
func (g *Gate) runLane(key string, l *lane) {
	for {
		g.mu.Lock()
		if len(l.queue) == 0 {
			l.running = false
			delete(g.lanes, key)
			g.mu.Unlock()
			return
		}
		it := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		// The item after this one needs its mark by the end of this push: a store that
		// lingers is asked to commit it now, not once the lane waits (see process).
		soon := len(l.queue) > 0 && len(l.queue[0].marked) == 0
		g.mu.Unlock()
		if soon {
			g.flush()
		}
		g.process(it)
	}
}

// process pushes it until it is done, dead-lettered, dropped or abandoned. It returns once
// the lane may move on: after the app's 2xx, before the completion is durable.
func (g *Gate) process(it *item) {
	for {
		if len(it.marked) == 0 {
			g.flush() // the lane waits for the mark: no lingering for more records
		}
		select {
		case err := <-it.marked:
			if err != nil {
				g.storeFailed(it, fmt.Errorf("%w: record in-flight %q: %v", ErrStore, it.d.ID, err))
				return
			}
		case <-g.stopping:
			// Never pushed: abandoned at once, not after the drain timeout (a store that
			// does not answer, such as a Redis that is down, must not hold the shutdown).
			g.abandon(it)
			return
		}
		if !it.prior.Elsewhere {
			break
		}
		// Another live replica is pushing this ID (G2: never two at once): wait until it
		// completes it or its lease ends, then look again.
		if !g.park(it, elsewhereWait) {
			g.abandon(it)
			return
		}
		g.mark(it)
	}
	if it.prior.State == dedup.Completed {
		it.mc.Deduplicated.Inc()
		g.settle(it, nil)
		return
	}
	// A previous run may have used up the attempts, or scheduled the next one for later:
	// the persisted count and time carry over (a crash loop must not retry forever).
	if g.opts.MaxAttempts > 0 && it.baseAttempt >= g.opts.MaxAttempts {
		g.exhausted(it, Result{Err: errors.New("max attempts used up before a restart")}, it.baseAttempt)
		return
	}
	if wait := time.Until(it.prior.NextAttempt); it.prior.State == dedup.InFlight && wait > 0 {
		if !g.park(it, min(wait, g.opts.Backoff.Max)) {
			g.abandon(it)
			return
		}
	}
	for {
		if g.isStopping() || it.d.IsFenced() {
			g.abandon(it)
			return
		}
		if next := it.baseAttempt + it.pushes + 1; g.store != nil && next > it.counted && !g.countAttempt(it, next) {
			return
		}
		select {
		case g.pushSlots <- struct{}{}:
		case <-g.stopping:
			g.abandon(it)
			return
		case <-it.d.Fenced:
			g.abandon(it)
			return
		}
		it.pushes++
		attempt := it.baseAttempt + it.pushes
		spanCtx, span := g.startPush(g.hardCtx, it)
		res := g.pusher.pushIn(g.hardCtx, spanCtx, it.d, attempt, it.redelivered || it.pushes > 1)
		<-g.pushSlots
		g.endPush(span, attempt, res)
		it.mc.Delivery(res.Verdict.String(), res.Duration.Seconds())
		g.noteApp(res)
		switch res.Verdict {
		case Success:
			g.complete(it, outcomeDelivered)
			return
		case Drop:
			if g.opts.DeadLetter {
				g.deadLetter(it, failure("dropped_by_app", res, attempt))
			} else {
				g.complete(it, outcomeDropped)
			}
			return
		case Permanent:
			if g.opts.DeadLetter {
				g.deadLetter(it, failure("permanent", res, attempt))
				return
			}
		}
		if g.opts.MaxAttempts > 0 && attempt >= g.opts.MaxAttempts {
			g.exhausted(it, res, attempt)
			return
		}
		wait := g.opts.Backoff.Delay(it.pushes)
		if res.RetryAfter > wait {
			// Honoured up to backoff.max, as after a restart: an app's Retry-After must not
			// park its lane for longer than the sidecar's own longest wait.
			wait = max(wait, min(res.RetryAfter, g.opts.Backoff.Max))
		}
		it.mc.Retried.Inc()
		g.log.DebugContext(it.trace.ctx, "push failed, retrying", "id", it.d.ID, "attempt", attempt, "status", res.Status, "error", errText(res.Err), "wait", wait)
		if g.store != nil {
			// Persist the time of the next attempt, so a restart continues the backoff.
			// Attempts stays the pushes started: the next one is counted when it starts
			// (countAttempt). Not waited for: losing it in a crash only repeats one
			// backoff step.
			g.store.Put(it.key, dedup.Entry{State: dedup.InFlight, Attempts: attempt, NextAttempt: time.Now().Add(wait)}, func(error) {})
		}
		if !g.park(it, wait) {
			g.abandon(it)
			return
		}
	}
}

// countAttempt records durably, before the push starts, that attempt number n starts now,
// as admission does for the first push: a crash during the push then counts it. It
// returns false when it settled it (stopping, or the store failed).
func (g *Gate) countAttempt(it *item, n int) bool {
	done := make(chan error, 1)
	g.store.Put(it.key, dedup.Entry{State: dedup.InFlight, Attempts: n}, func(err error) { done <- err })
	g.flush()
	select {
	case err := <-done:
		if err != nil {
			g.storeFailed(it, fmt.Errorf("%w: record attempt %d of %q: %v", ErrStore, n, it.d.ID, err))
			return false
		}
		it.counted = n
		return true
	case <-g.stopping:
		g.abandon(it)
		return false
	}
}

// exhausted ends a message whose attempts are used up: dead-lettered when a target exists,
// else dropped (configuration validation guarantees drop_after_max_attempts then).
func (g *Gate) exhausted(it *item, res Result, attempts int) {
	if g.opts.DeadLetter {
		g.deadLetter(it, failure("max_attempts", res, attempts))
		return
	}
	g.log.WarnContext(it.trace.ctx, "dropping message after max attempts", "id", it.d.ID, "attempts", attempts, "error", errText(res.Err))
	g.complete(it, outcomeDropped)
}

// park waits d before its next attempt; the wait shows in the parked gauges. It returns
// false when the gate is stopping or the delivery was fenced.
func (g *Gate) park(it *item, d time.Duration) bool {
	g.laneMu.Lock()
	if _, ok := g.parkedSince[it]; !ok {
		g.parkedSince[it] = time.Now()
	}
	g.laneMu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-g.stopping:
		return false
	case <-it.d.Fenced:
		return false
	}
}

// noteApp logs app availability changes once, not per message.
func (g *Gate) noteApp(res Result) {
	down := res.Status == 0 && res.Verdict == Retry
	if down && !g.appDown.Swap(true) {
		g.log.Warn("app unreachable; messages wait unacknowledged", "url", g.opts.Push.URL, "error", errText(res.Err))
		g.opts.AppReachable(false)
	} else if !down && res.Status != 0 && g.appDown.Swap(false) {
		g.log.Info("app reachable again", "url", g.opts.Push.URL)
		g.opts.AppReachable(true)
	}
}

// deadLetter writes it to the dead-letter target, retrying until the broker confirms or the
// gate stops; only then is it completed. The original is never acknowledged without it.
func (g *Gate) deadLetter(it *item, f adapters.Failure) {
	for n := 1; ; n++ {
		if it.d.IsFenced() {
			// The new owner of its partition or queue redelivers it; a dead-letter copy
			// written now would stand beside that delivery.
			g.abandon(it)
			return
		}
		ctx, cancel := context.WithTimeout(g.hardCtx, 30*time.Second)
		err := g.src.DeadLetter(ctx, it.d, f)
		cancel()
		if err == nil {
			g.complete(it, outcomeDeadLettered)
			return
		}
		if errors.Is(err, adapters.ErrStaleDelivery) {
			// The broker redelivers it; the redelivered copy (waiting behind this one
			// for its ID) will be dead-lettered in its turn.
			g.log.WarnContext(it.trace.ctx, "dead-letter refused for a stale delivery; leaving it to redelivery", "id", it.d.ID, "error", err)
			g.abandon(it)
			return
		}
		g.m.Error("dead_letter")
		g.log.WarnContext(it.trace.ctx, "dead-letter write failed; retrying", "id", it.d.ID, "attempt", n, "error", err)
		if !g.park(it, g.opts.Backoff.Delay(n)) {
			g.abandon(it)
			return
		}
	}
}

type outcome int

const (
	outcomeDelivered outcome = iota
	outcomeDeadLettered
	outcomeDropped
)

// complete records the ID as completed (durably) and then settles the delivery. It does not
// wait: the settle happens on the store's commit.
func (g *Gate) complete(it *item, o outcome) {
	it.trace.outcome = o.String()
	switch o {
	case outcomeDeadLettered:
		it.mc.DeadLettered.Inc()
	case outcomeDropped:
		it.mc.Dropped.Inc()
		it.d.MarkDropped()
	}
	if g.store == nil {
		g.settle(it, nil)
		return
	}
	g.store.Put(it.key, dedup.Entry{State: dedup.Completed, Attempts: it.baseAttempt + it.pushes}, func(err error) {
		if err != nil {
			g.storeFailed(it, fmt.Errorf("%w: record completed %q: %v", ErrStore, it.d.ID, err))
			return
		}
		g.settle(it, nil)
	})
	if len(g.pushSlots) == 0 {
		// No push on the wire: what waits now may be waiting for this record (a lane's
		// look-ahead or the broker's unacknowledged window full of completions).
		g.flush()
	}
}

// abandon leaves it unacknowledged for the broker to redeliver. If it was never pushed,
// the in-flight record is rolled back so the redelivery is not flagged as seen; if it was,
// the record keeps saying so. Either way this replica gives up its claim (Released), so
// that a replica sharing the store may take the message at once.
func (g *Gate) abandon(it *item) {
	it.mc.Abandoned.Inc()
	if g.store != nil {
		// Runs on the store's writer after the mark (requests apply in order), where
		// it.wrote and it.prior were set: the lane may abandon before the mark is done.
		g.store.Update(it.key, func(cur dedup.Entry) (dedup.Entry, bool) {
			if !it.wrote || cur.State != dedup.InFlight || cur.Elsewhere {
				return cur, false // not our mark (any more)
			}
			if it.pushes == 0 {
				if it.prior.State == dedup.Unknown {
					return dedup.Entry{}, true // deletes the mark
				}
				cur = it.prior
				cur.Elsewhere = false
			} else {
				// No push is on the wire: a count recorded for one that did not start
				// is taken back.
				cur.Attempts = it.baseAttempt + it.pushes
			}
			cur.Released = true
			return cur, true
		}, nil)
	}
	g.settle(it, adapters.ErrNotDone)
}

func (g *Gate) storeFailed(it *item, err error) {
	g.m.Error("store")
	g.log.ErrorContext(it.trace.ctx, "dedup store failed; stopping without acknowledging", "error", err)
	g.stop(err)
	g.settle(it, adapters.ErrNotDone)
}

// settle reports the decision to the adapter, returns the permit, and hands the ID to the
// next waiting copy, if any. It may run on the store's writer goroutine, so it must not
// block: the next copy is started on its own goroutine.
func (g *Gate) settle(it *item, err error) {
	if err == nil {
		it.mc.Acked.Inc()
	}
	g.endDelivery(it, err)
	it.d.Settle(err)
	g.mu.Lock()
	var next *item
	if waiting := g.active[it.key]; len(waiting) > 0 {
		next = waiting[0]
		g.active[it.key] = waiting[1:]
	} else {
		delete(g.active, it.key)
	}
	g.mu.Unlock()
	if next != nil {
		if g.isStopping() {
			go g.abandon(next)
		} else {
			go g.begin(next)
		}
	}
	freed := false
	g.laneMu.Lock()
	delete(g.parkedSince, it)
	g.admittedBytes -= it.size
	if lane := it.d.Lane; lane != "" {
		wasFull := g.laneFullLocked(lane)
		if n := g.laneCount[lane] - 1; n == 0 {
			delete(g.laneCount, lane)
		} else {
			g.laneCount[lane] = n
		}
		if b := g.laneBytes[lane] - it.size; b == 0 {
			delete(g.laneBytes, lane)
			// One lane fewer shares the byte budget: the others' shares grew.
			freed = g.opts.MaxBytes > 0
		} else {
			g.laneBytes[lane] = b
		}
		freed = freed || wasFull && !g.laneFullLocked(lane)
	}
	g.laneMu.Unlock()
	if it.size > 0 {
		select {
		case g.bytesFreed <- struct{}{}:
		default:
		}
	}
	if freed && g.limiter != nil {
		g.limiter.LaneFreed()
	}
	g.m.Inflight.Set(float64(g.inflightN.Add(-1)))
	<-g.permits
	g.inflight.Done()
}

// reportParked keeps the parked gauges current: how many messages wait for a retry (each
// heads its lane) and for how long the oldest has been failing.
func (g *Gate) reportParked() (stop func()) {
	done := make(chan struct{})
	update := func() {
		g.laneMu.Lock()
		n := len(g.parkedSince)
		var oldest time.Duration
		for _, t := range g.parkedSince {
			oldest = max(oldest, time.Since(t))
		}
		g.laneMu.Unlock()
		g.m.ParkedLanes.Set(float64(n))
		g.m.OldestParked.Set(oldest.Seconds())
	}
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				update()
			case <-done:
				update()
				return
			}
		}
	}()
	return func() { close(done) }
}

// maxKeyLen bounds dedup keys: longer IDs (a header can hold anything) are stored by hash,
// which keeps the store small and never rejects a message for its ID's length.
const maxKeyLen = 128

func storeKey(id string) string {
	if len(id) <= maxKeyLen {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func failure(reason string, res Result, attempts int) adapters.Failure {
	return adapters.Failure{Reason: reason, Status: res.Status, Error: errText(res.Err), Attempts: attempts, Time: time.Now()}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
