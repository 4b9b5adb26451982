package ackgate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
	"github.com/mqsidecar/mqsidecar/metrics"
)

// fakeSource is an in-memory adapters.Source that records every settlement.
type fakeSource struct {
	ch    chan *adapters.Delivery
	reads atomic.Int64

	mu      sync.Mutex
	settled map[string][]error // by delivery ID, in settle order
	order   []string           // IDs settled with nil, in order
	dls     []adapters.Failure
	dlErrs  int // fail this many DeadLetter calls first
	dlStale bool
	onAck   func(d *adapters.Delivery, err error)
}

func newFakeSource() *fakeSource {
	return &fakeSource{ch: make(chan *adapters.Delivery, 10000), settled: map[string][]error{}}
}

func (s *fakeSource) Read(ctx context.Context) (*adapters.Delivery, error) {
	select {
	case d := <-s.ch:
		s.reads.Add(1)
		return d, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *fakeSource) DeadLetter(_ context.Context, d *adapters.Delivery, f adapters.Failure) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dlStale {
		return fmt.Errorf("channel gone: %w", adapters.ErrStaleDelivery)
	}
	if s.dlErrs > 0 {
		s.dlErrs--
		return errors.New("broker said no")
	}
	s.dls = append(s.dls, f)
	return nil
}

func (s *fakeSource) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (s *fakeSource) Ready() error                  { return nil }
func (s *fakeSource) Close(context.Context) error   { return nil }

// send queues a delivery; lane "" means unordered.
func (s *fakeSource) send(id, lane, key string) *adapters.Delivery {
	return s.sendWith(&adapters.Delivery{ID: id, Payload: []byte(id), Source: "fake://t", Lane: lane, Key: key})
}

// sendWith queues d, set up as send does.
func (s *fakeSource) sendWith(d *adapters.Delivery) *adapters.Delivery {
	d.Ack = func(err error) {
		s.mu.Lock()
		s.settled[d.ID] = append(s.settled[d.ID], err)
		if err == nil {
			s.order = append(s.order, d.ID)
		}
		hook := s.onAck
		s.mu.Unlock()
		if hook != nil {
			hook(d, err)
		}
	}
	s.ch <- d
	return d
}

func (s *fakeSource) settledCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, errs := range s.settled {
		n += len(errs)
	}
	return n
}

func (s *fakeSource) results(id string) []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.settled[id]...)
}

// app is a scripted test app: answer decides each response from the ID and attempt.
type app struct {
	mu       sync.Mutex
	pushes   map[string][]http.Header
	order    []string
	active   map[string]int
	overlap  atomic.Int64 // same ID pushed concurrently
	inflight atomic.Int64
	peak     atomic.Int64
	answer   func(id string, attempt int, w http.ResponseWriter) bool // true = handled
	delay    time.Duration
}

func newApp(t *testing.T, answer func(id string, attempt int, w http.ResponseWriter) bool) (*app, string) {
	a := &app{pushes: map[string][]http.Header{}, active: map[string]int{}, answer: answer}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return a, srv.URL
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("ce-id")
	n := a.inflight.Add(1)
	defer a.inflight.Add(-1)
	for p := a.peak.Load(); n > p && !a.peak.CompareAndSwap(p, n); p = a.peak.Load() {
	}
	a.mu.Lock()
	a.pushes[id] = append(a.pushes[id], r.Header.Clone())
	a.order = append(a.order, id)
	attempt := len(a.pushes[id])
	if a.active[id] > 0 {
		a.overlap.Add(1)
	}
	a.active[id]++
	a.mu.Unlock()
	defer func() { a.mu.Lock(); a.active[id]--; a.mu.Unlock() }()
	if a.delay > 0 {
		time.Sleep(a.delay)
	}
	if a.answer != nil && a.answer(id, attempt, w) {
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (a *app) count(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pushes[id])
}

func (a *app) headers(id string) []http.Header {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]http.Header(nil), a.pushes[id]...)
}

func openStore(t *testing.T) *dedup.Store {
	t.Helper()
	st, err := dedup.Open(filepath.Join(t.TempDir(), "dedup.db"), dedup.Options{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	lifecycletest.Start(t, st.Run)
	return st
}

func opts(url string) Options {
	return Options{
		Push:         PushOptions{URL: url, Timeout: 2 * time.Second, EventType: "t", MaxResponseBytes: 1 << 16},
		Ordering:     OrderPartition,
		MaxInflight:  16,
		Backoff:      Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, Multiplier: 2},
		DrainTimeout: 5 * time.Second,
		Metrics:      metrics.New(),
	}
}

// start runs the gate in the background; the returned stop cancels and waits for Run.
func start(t *testing.T, src adapters.Source, store Store, o Options) (g *Gate, stop func() error) {
	t.Helper()
	g = New(src, store, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(15 * time.Second):
				err = errors.New("Run did not return")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return g, stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestDeliversAndRecordsBeforeSettling(t *testing.T) {
	a, url := newApp(t, nil)
	src := newFakeSource()
	st := openStore(t)
	// At the moment of each settlement the completion must already be durable (G2).
	var violations atomic.Int64
	src.onAck = func(d *adapters.Delivery, err error) {
		if e, _ := st.Get(d.ID); err == nil && e.State != dedup.Completed {
			violations.Add(1)
		}
	}
	start(t, src, st, opts(url))
	for i := 0; i < 200; i++ {
		src.send("m"+strconv.Itoa(i), "p"+strconv.Itoa(i%4), "")
	}
	waitFor(t, "200 settlements", func() bool { return src.settledCount() == 200 })
	for i := 0; i < 200; i++ {
		id := "m" + strconv.Itoa(i)
		if r := src.results(id); len(r) != 1 || r[0] != nil {
			t.Fatalf("%s settled %v", id, r)
		}
		if a.count(id) != 1 {
			t.Fatalf("%s pushed %d times", id, a.count(id))
		}
	}
	if violations.Load() != 0 {
		t.Fatalf("%d settlements before the completion was recorded", violations.Load())
	}
}

func TestCompletedIDIsNotPushedAgain(t *testing.T) {
	a, url := newApp(t, nil)
	src := newFakeSource()
	st := openStore(t)
	if err := st.PutSync("done-before", dedup.Entry{State: dedup.Completed, Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	g, _ := start(t, src, st, opts(url))
	src.send("done-before", "p0", "")
	src.send("fresh", "p0", "")
	src.send("fresh", "p1", "") // producer duplicate on another partition
	waitFor(t, "3 settlements", func() bool { return src.settledCount() == 3 })
	if a.count("done-before") != 0 || a.count("fresh") != 1 {
		t.Fatalf("pushes: done-before %d fresh %d", a.count("done-before"), a.count("fresh"))
	}
	if got := counter(g.m.Deduplicated); got != 2 {
		t.Fatalf("deduplicated = %v, want 2", got)
	}
}

func TestInFlightRecordMakesRedeliveryVisible(t *testing.T) {
	a, url := newApp(t, nil)
	src := newFakeSource()
	st := openStore(t)
	// A previous run pushed it (attempt 2) and crashed before recording completion.
	if err := st.PutSync("crashed", dedup.Entry{State: dedup.InFlight, Attempts: 2}); err != nil {
		t.Fatal(err)
	}
	start(t, src, st, opts(url))
	src.send("crashed", "p0", "")
	src.send("new", "p0", "")
	waitFor(t, "2 settlements", func() bool { return src.settledCount() == 2 })
	h := a.headers("crashed")[0]
	if h.Get("ce-redelivered") != "true" || h.Get("ce-deliveryattempt") != "3" {
		t.Fatalf("crashed: redelivered=%q attempt=%q", h.Get("ce-redelivered"), h.Get("ce-deliveryattempt"))
	}
	h = a.headers("new")[0]
	if h.Get("ce-redelivered") != "" || h.Get("ce-deliveryattempt") != "1" {
		t.Fatalf("new: redelivered=%q attempt=%q", h.Get("ce-redelivered"), h.Get("ce-deliveryattempt"))
	}
}

func TestCopiesOfOneIDAreNeverPushedConcurrently(t *testing.T) {
	for _, withStore := range []bool{true, false} {
		t.Run(fmt.Sprintf("store=%v", withStore), func(t *testing.T) {
			a, url := newApp(t, nil)
			a.delay = 20 * time.Millisecond
			src := newFakeSource()
			var st Store
			if withStore {
				st = openStore(t)
			}
			o := opts(url)
			o.Ordering = OrderNone
			start(t, src, st, o)
			for i := 0; i < 5; i++ {
				src.send("same", "", "")
			}
			waitFor(t, "5 settlements", func() bool { return src.settledCount() == 5 })
			if a.overlap.Load() != 0 {
				t.Fatalf("%d overlapping pushes of one ID", a.overlap.Load())
			}
			want := 1
			if !withStore {
				want = 5 // no store: sequential, but each copy is pushed
			}
			if a.count("same") != want {
				t.Fatalf("pushed %d times, want %d", a.count("same"), want)
			}
		})
	}
}

func TestRetriesCountAttempts(t *testing.T) {
	a, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		if attempt < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	src := newFakeSource()
	g, _ := start(t, src, openStore(t), opts(url))
	src.send("flaky", "p0", "")
	waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
	hs := a.headers("flaky")
	if len(hs) != 3 {
		t.Fatalf("pushed %d times", len(hs))
	}
	for i, h := range hs {
		if h.Get("ce-deliveryattempt") != strconv.Itoa(i+1) {
			t.Fatalf("push %d: attempt %q", i+1, h.Get("ce-deliveryattempt"))
		}
		if (i > 0) != (h.Get("ce-redelivered") == "true") {
			t.Fatalf("push %d: redelivered %q", i+1, h.Get("ce-redelivered"))
		}
	}
	if counter(g.m.Retried) != 2 {
		t.Fatalf("retried %v", counter(g.m.Retried))
	}
}

// TestLingeringStoreIsFlushedWhenWaitedFor: a store that commits a batch only when it is
// flushed (or after an hour) never holds the gate up: a lane waiting for its mark, a
// retry's attempt count, and completions once no push is on the wire all flush it.
func TestLingeringStoreIsFlushedWhenWaitedFor(t *testing.T) {
	a, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		if id == "flaky" && attempt == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	st, err := dedup.Open(filepath.Join(t.TempDir(), "dedup.db"), dedup.Options{TTL: time.Hour, MaxLinger: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	lifecycletest.Start(t, st.Run)
	src := &limitedSource{fakeSource: newFakeSource(), wake: make(chan struct{}, 1), maxSeen: map[string]int{}, inflight: map[string]int{}}
	o := opts(url)
	o.MaxInflight, o.LaneLookahead = 8, 4
	start(t, src, st, o)
	src.send("flaky", "p0", "")
	waitFor(t, "the retried message settled", func() bool { return src.settledCount() == 1 })
	for i := range 100 {
		src.send(fmt.Sprint("m", i), fmt.Sprint("p", i%4), "")
	}
	waitFor(t, "101 settlements", func() bool { return src.settledCount() == 101 })
	if n := a.count("flaky"); n != 2 {
		t.Fatalf("flaky pushed %d times, want 2", n)
	}
	for i := range 100 {
		if e, _ := st.Get(fmt.Sprint("m", i)); e.State != dedup.Completed {
			t.Fatalf("m%d settled but recorded as %v", i, e.State)
		}
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	var first time.Time
	var gap time.Duration
	_, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		if attempt == 1 {
			first = time.Now()
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		gap = time.Since(first)
		return false
	})
	src := newFakeSource()
	o := opts(url)
	o.Backoff.Max = 2 * time.Second // Retry-After is honoured up to backoff.max
	start(t, src, nil, o)
	src.send("slow-down", "p0", "")
	waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
	if gap < time.Second {
		t.Fatalf("retried after %v, Retry-After asked for 1s", gap)
	}
}

func TestPermanentFailure(t *testing.T) {
	reject := func(id string, attempt int, w http.ResponseWriter) bool {
		if attempt <= 3 {
			w.WriteHeader(http.StatusUnprocessableEntity)
			return true
		}
		return false
	}
	t.Run("dead-lettered at once when a target exists", func(t *testing.T) {
		a, url := newApp(t, reject)
		src := newFakeSource()
		src.dlErrs = 2 // the first two dead-letter writes fail: retried, original not acked meanwhile
		o := opts(url)
		o.DeadLetter = true
		g, _ := start(t, src, openStore(t), o)
		src.send("poison", "p0", "")
		waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
		if a.count("poison") != 1 {
			t.Fatalf("pushed %d times", a.count("poison"))
		}
		src.mu.Lock()
		dls := append([]adapters.Failure(nil), src.dls...)
		src.mu.Unlock()
		if len(dls) != 1 || dls[0].Reason != "permanent" || dls[0].Status != 422 || dls[0].Attempts != 1 {
			t.Fatalf("dead letters %+v", dls)
		}
		if r := src.results("poison"); len(r) != 1 || r[0] != nil {
			t.Fatalf("settled %v", r)
		}
		if counter(g.m.DeadLettered) != 1 {
			t.Fatal("dead-letter not counted")
		}
	})
	t.Run("retried when there is no target", func(t *testing.T) {
		a, url := newApp(t, reject)
		src := newFakeSource()
		start(t, src, openStore(t), opts(url))
		src.send("poison", "p0", "")
		waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
		if a.count("poison") != 4 {
			t.Fatalf("pushed %d times, want 4", a.count("poison"))
		}
	})
}

func TestMaxAttempts(t *testing.T) {
	fail := func(string, int, http.ResponseWriter) bool { panic(http.ErrAbortHandler) }
	t.Run("dead letter", func(t *testing.T) {
		a, url := newApp(t, fail)
		src := newFakeSource()
		o := opts(url)
		o.MaxAttempts, o.DeadLetter = 3, true
		start(t, src, openStore(t), o)
		src.send("doomed", "p0", "")
		waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
		src.mu.Lock()
		defer src.mu.Unlock()
		if a.count("doomed") != 3 || len(src.dls) != 1 || src.dls[0].Reason != "max_attempts" || src.dls[0].Attempts != 3 {
			t.Fatalf("pushes %d dead letters %+v", a.count("doomed"), src.dls)
		}
	})
	t.Run("drop", func(t *testing.T) {
		a, url := newApp(t, fail)
		src := newFakeSource()
		o := opts(url)
		o.MaxAttempts, o.DropAfterMaxAttempts = 2, true
		g, _ := start(t, src, openStore(t), o)
		d := src.send("doomed", "p0", "")
		waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
		if a.count("doomed") != 2 || counter(g.m.Dropped) != 1 || !d.Dropped() {
			t.Fatalf("pushes %d dropped %v, delivery marked dropped %t", a.count("doomed"), counter(g.m.Dropped), d.Dropped())
		}
	})
	t.Run("attempts persisted across a restart", func(t *testing.T) {
		a, url := newApp(t, fail)
		st := openStore(t)
		if err := st.PutSync("doomed", dedup.Entry{State: dedup.InFlight, Attempts: 2}); err != nil {
			t.Fatal(err)
		}
		src := newFakeSource()
		o := opts(url)
		o.MaxAttempts, o.DeadLetter = 3, true
		start(t, src, st, o)
		src.send("doomed", "p0", "")
		waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
		if a.count("doomed") != 1 {
			t.Fatalf("pushed %d times after 2 earlier attempts with max 3", a.count("doomed"))
		}
	})
}

func TestDaprDrop(t *testing.T) {
	drop := func(id string, attempt int, w http.ResponseWriter) bool {
		if id != "unwanted" {
			return false // the default answer: 200
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"DROP"}`))
		return true
	}
	a, url := newApp(t, drop)
	src := newFakeSource()
	g, _ := start(t, src, openStore(t), opts(url))
	d := src.send("unwanted", "p0", "")
	done := src.send("wanted", "p1", "")
	waitFor(t, "settled", func() bool { return src.settledCount() == 2 })
	if r := src.results("unwanted"); r[0] != nil || a.count("unwanted") != 1 || counter(g.m.Dropped) != 1 || !d.Dropped() {
		t.Fatalf("settled %v pushes %d dropped %v, delivery marked dropped %t", r, a.count("unwanted"), counter(g.m.Dropped), d.Dropped())
	}
	if done.Dropped() {
		t.Fatal("a delivered message was marked dropped")
	}
}

func TestPartitionOrderWithParallelLanes(t *testing.T) {
	a, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		if attempt == 1 && id[len(id)-1] == '3' { // some first attempts fail: order must hold anyway
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return false
	})
	a.delay = time.Millisecond
	src := newFakeSource()
	o := opts(url)
	o.MaxInflight = 32
	start(t, src, nil, o)
	const lanes, per = 4, 50
	for i := 0; i < per; i++ {
		for l := 0; l < lanes; l++ {
			src.send(fmt.Sprintf("p%d-%03d", l, i), "p"+strconv.Itoa(l), "")
		}
	}
	waitFor(t, "all settled", func() bool { return src.settledCount() == lanes*per })
	a.mu.Lock()
	defer a.mu.Unlock()
	last := map[byte]string{}
	for _, id := range a.order {
		lane := id[1]
		if prev, ok := last[lane]; ok && id < prev {
			t.Fatalf("lane %c: %s pushed after %s", lane, id, prev)
		}
		last[lane] = id
	}
	if a.peak.Load() < 2 {
		t.Fatalf("lanes did not run in parallel (peak %d)", a.peak.Load())
	}
}

func TestKeyOrdering(t *testing.T) {
	a, url := newApp(t, nil)
	a.delay = 2 * time.Millisecond
	src := newFakeSource()
	o := opts(url)
	o.Ordering = OrderKey
	start(t, src, nil, o)
	for i := 0; i < 40; i++ {
		for k := 0; k < 4; k++ {
			src.send(fmt.Sprintf("k%d-%03d", k, i), "p0", "k"+strconv.Itoa(k))
		}
	}
	waitFor(t, "all settled", func() bool { return src.settledCount() == 160 })
	a.mu.Lock()
	defer a.mu.Unlock()
	last := map[byte]string{}
	for _, id := range a.order {
		if prev, ok := last[id[1]]; ok && id < prev {
			t.Fatalf("key %c: %s after %s", id[1], id, prev)
		}
		last[id[1]] = id
	}
	if a.peak.Load() < 2 {
		t.Fatalf("keys of one partition did not run in parallel (peak %d)", a.peak.Load())
	}
}

func TestMaxInflightBackpressure(t *testing.T) {
	release := make(chan struct{})
	a, url := newApp(t, func(string, int, http.ResponseWriter) bool { <-release; return false })
	src := newFakeSource()
	o := opts(url)
	o.Ordering, o.MaxInflight = OrderNone, 8
	start(t, src, nil, o)
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // a failure below must not leave the app's handlers blocked
	for i := 0; i < 100; i++ {
		src.send("m"+strconv.Itoa(i), "", "")
	}
	waitFor(t, "8 pushes in flight", func() bool { return a.inflight.Load() == 8 })
	time.Sleep(100 * time.Millisecond) // give an unbounded gate the chance to read or push more
	if n, want := src.reads.Load(), int64(admissionFactor*8); n != want {
		t.Fatalf("read %d deliveries with max_inflight 8, want the admission bound %d", n, want)
	}
	if n := a.inflight.Load(); n != 8 {
		t.Fatalf("%d pushes in flight with max_inflight 8", n)
	}
	unblock()
	waitFor(t, "all settled", func() bool { return src.settledCount() == 100 })
	if a.peak.Load() > 8 {
		t.Fatalf("peak concurrency %d > max_inflight 8", a.peak.Load())
	}
}

func TestAppDownNothingAcknowledged(t *testing.T) {
	var up atomic.Bool
	a, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		if !up.Load() {
			w.WriteHeader(http.StatusBadGateway)
			return true
		}
		return false
	})
	src := newFakeSource()
	start(t, src, openStore(t), opts(url))
	for i := 0; i < 20; i++ {
		src.send("m"+strconv.Itoa(i), "p"+strconv.Itoa(i%3), "")
	}
	waitFor(t, "retries", func() bool { return a.count("m0") >= 3 })
	if n := src.settledCount(); n != 0 {
		t.Fatalf("%d settled while the app was down", n)
	}
	up.Store(true)
	waitFor(t, "all settled", func() bool { return src.settledCount() == 20 })
	for i := 0; i < 20; i++ {
		if r := src.results("m" + strconv.Itoa(i)); r[0] != nil {
			t.Fatalf("m%d settled %v", i, r)
		}
	}
}

func TestShutdownFinishesPushesOnTheWireAndAbandonsTheRest(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	_, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		if id == "on-the-wire" {
			entered <- struct{}{}
			<-release
		}
		return false
	})
	src := newFakeSource()
	st := openStore(t)
	_, stop := start(t, src, st, opts(url))
	src.send("on-the-wire", "p0", "")
	src.send("queued", "p0", "") // behind it in the same lane
	<-entered
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	time.Sleep(50 * time.Millisecond)
	close(release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if r := src.results("on-the-wire"); len(r) != 1 || r[0] != nil {
		t.Fatalf("on-the-wire settled %v, want done", r)
	}
	if r := src.results("queued"); len(r) != 1 || !errors.Is(r[0], adapters.ErrNotDone) {
		t.Fatalf("queued settled %v, want not done", r)
	}
	// The queued one was never pushed: its in-flight record is rolled back.
	waitFor(t, "rollback", func() bool { e, _ := st.Get("queued"); return e.State == dedup.Unknown })
}

func TestDrainTimeoutCutsHangingPush(t *testing.T) {
	_, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		time.Sleep(3 * time.Second)
		return false
	})
	src := newFakeSource()
	o := opts(url)
	o.Push.Timeout = 10 * time.Second
	o.DrainTimeout = 200 * time.Millisecond
	_, stop := start(t, src, nil, o)
	src.send("hangs", "p0", "")
	time.Sleep(100 * time.Millisecond)
	t0 := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("shutdown took %v with a 200ms drain timeout", d)
	}
	if r := src.results("hangs"); len(r) != 1 || r[0] == nil {
		t.Fatalf("hanging push settled %v, want not done", r)
	}
}

// failingStore fails every write.
type failingStore struct{}

func (failingStore) Update(_ string, _ func(dedup.Entry) (dedup.Entry, bool), done func(dedup.Entry, error)) {
	if done != nil {
		done(dedup.Entry{}, errors.New("disk on fire"))
	}
}

func (failingStore) Put(_ string, _ dedup.Entry, done func(error)) {
	done(errors.New("disk on fire"))
}

func TestStoreFailureStopsWithoutAcknowledging(t *testing.T) {
	a, url := newApp(t, nil)
	src := newFakeSource()
	g := New(src, failingStore{}, opts(url))
	src.send("m1", "p0", "")
	err := g.Run(context.Background())
	if !errors.Is(err, ErrStore) {
		t.Fatalf("Run returned %v, want ErrStore", err)
	}
	if r := src.results("m1"); len(r) != 1 || r[0] == nil {
		t.Fatalf("settled %v, want not done", r)
	}
	if a.count("m1") != 0 {
		t.Fatal("pushed although the in-flight record failed")
	}
}

func TestLongIDsAreHashedForTheStore(t *testing.T) {
	a, url := newApp(t, nil)
	src := newFakeSource()
	start(t, src, openStore(t), opts(url))
	long := strings.Repeat("x", 70000) // longer than bbolt's key limit
	src.send(long, "p0", "")
	src.send(long, "p0", "")
	waitFor(t, "settled", func() bool { return src.settledCount() == 2 })
	if a.count(long) != 1 {
		t.Fatalf("pushed %d times, want 1 (the copy is a duplicate)", a.count(long))
	}
}

func TestInvalidIDStillPushable(t *testing.T) {
	a, url := newApp(t, nil)
	src := newFakeSource()
	start(t, src, openStore(t), opts(url))
	src.send("bad\r\nid", "p0", "")
	waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
	if r := src.results("bad\r\nid"); r[0] != nil || a.count("bad%0D%0Aid") != 1 {
		t.Fatalf("settled %v; pushes %v", r, a.pushes)
	}
}

// counter is the sum of c's series (a counter by topic: over every topic).
func counter(c prometheus.Collector) float64 { return metrics.CounterSum(c) }

// limitedSource is a fakeSource that honours adapters.LaneLimiter: deliveries wait in
// per-lane order while their lane is full.
type limitedSource struct {
	*fakeSource
	mu       sync.Mutex
	buf      []*adapters.Delivery
	full     func(string) bool
	wake     chan struct{}
	maxSeen  map[string]int
	inflight map[string]int
}

func (s *limitedSource) LimitLanes(full func(string) bool) { s.full = full }
func (s *limitedSource) LaneFreed() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *limitedSource) Read(ctx context.Context) (*adapters.Delivery, error) {
	for {
		s.mu.Lock()
		var pending []*adapters.Delivery
	drain:
		for {
			select {
			case d := <-s.ch:
				pending = append(pending, d)
			default:
				break drain
			}
		}
		s.buf = append(s.buf, pending...)
		for i, d := range s.buf {
			if s.full(d.Lane) || s.blockedByEarlier(i) {
				continue
			}
			s.buf = append(s.buf[:i], s.buf[i+1:]...)
			s.inflight[d.Lane]++
			s.maxSeen[d.Lane] = max(s.maxSeen[d.Lane], s.inflight[d.Lane])
			ack := d.Ack
			d.Ack = func(err error) {
				s.mu.Lock()
				s.inflight[d.Lane]--
				s.mu.Unlock()
				ack(err)
			}
			s.mu.Unlock()
			s.reads.Add(1)
			return d, nil
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// blockedByEarlier keeps lane order: an earlier delivery of the same lane is still held.
func (s *limitedSource) blockedByEarlier(i int) bool {
	for _, e := range s.buf[:i] {
		if e.Lane == s.buf[i].Lane {
			return true
		}
	}
	return false
}

func TestPoisonLaneCannotTakeEveryInflightSlot(t *testing.T) {
	a, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		if id == "p0-000" { // the poison message: fails until the end of the test
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return false
	})
	src := &limitedSource{fakeSource: newFakeSource(), wake: make(chan struct{}, 1), maxSeen: map[string]int{}, inflight: map[string]int{}}
	o := opts(url)
	o.MaxInflight, o.LaneLookahead = 8, 4
	start(t, src, openStore(t), o)
	for i := 0; i < 50; i++ {
		src.send(fmt.Sprintf("p0-%03d", i), "p0", "")
		src.send(fmt.Sprintf("p1-%03d", i), "p1", "")
		src.send(fmt.Sprintf("p2-%03d", i), "p2", "")
	}
	waitFor(t, "healthy partitions delivered", func() bool {
		return a.count("p1-049") == 1 && a.count("p2-049") == 1
	})
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.maxSeen["p0"] > 4 {
		t.Fatalf("poisoned lane held %d slots, look-ahead is 4", src.maxSeen["p0"])
	}
	if a.count("p0-001") != 0 {
		t.Fatal("partition order broken: p0-001 pushed while p0-000 fails")
	}
}

func TestPersistedRetryScheduleSurvivesRestart(t *testing.T) {
	t.Run("next attempt time is honoured", func(t *testing.T) {
		var at time.Time
		a, url := newApp(t, func(string, int, http.ResponseWriter) bool { at = time.Now(); return false })
		st := openStore(t)
		next := time.Now().Add(700 * time.Millisecond)
		if err := st.PutSync("later", dedup.Entry{State: dedup.InFlight, Attempts: 3, NextAttempt: next}); err != nil {
			t.Fatal(err)
		}
		src := newFakeSource()
		o := opts(url)
		o.Backoff.Max = 5 * time.Second
		start(t, src, st, o)
		src.send("later", "p0", "")
		waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
		if at.Before(next) {
			t.Fatalf("pushed %v before the persisted next attempt", next.Sub(at))
		}
		if h := a.headers("later")[0]; h.Get("ce-deliveryattempt") != "4" {
			t.Fatalf("attempt %q, want 4", h.Get("ce-deliveryattempt"))
		}
	})
	t.Run("used-up attempts go to the dead letter without a push", func(t *testing.T) {
		a, url := newApp(t, nil)
		st := openStore(t)
		if err := st.PutSync("spent", dedup.Entry{State: dedup.InFlight, Attempts: 5}); err != nil {
			t.Fatal(err)
		}
		src := newFakeSource()
		o := opts(url)
		o.MaxAttempts, o.DeadLetter = 5, true
		start(t, src, st, o)
		src.send("spent", "p0", "")
		waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
		src.mu.Lock()
		defer src.mu.Unlock()
		if a.count("spent") != 0 || len(src.dls) != 1 || src.dls[0].Attempts != 5 {
			t.Fatalf("pushes %d, dead letters %+v", a.count("spent"), src.dls)
		}
	})
	t.Run("a retry records the next attempt", func(t *testing.T) {
		st := openStore(t)
		_, failURL := newApp(t, func(_ string, _ int, w http.ResponseWriter) bool {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		})
		src := newFakeSource()
		o := opts(failURL)
		o.Backoff = Backoff{Initial: time.Hour, Max: time.Hour, Multiplier: 2}
		_, stop := start(t, src, st, o)
		src.send("failing", "p0", "")
		waitFor(t, "retry scheduled", func() bool {
			e, _ := st.Get("failing")
			return e.State == dedup.InFlight && e.Attempts == 1 && !e.NextAttempt.IsZero() // one push started, the next scheduled
		})
		_ = stop()
	})
}

func TestStaleDeadLetterIsAbandonedNotRetriedForever(t *testing.T) {
	_, url := newApp(t, func(_ string, _ int, w http.ResponseWriter) bool {
		w.WriteHeader(http.StatusBadRequest)
		return true
	})
	src := newFakeSource()
	src.dlStale = true
	o := opts(url)
	o.DeadLetter = true
	start(t, src, openStore(t), o)
	src.send("stale", "p0", "")
	waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
	if r := src.results("stale"); !errors.Is(r[0], adapters.ErrNotDone) {
		t.Fatalf("settled %v, want not done", r)
	}
}

// sendFenced queues a delivery whose Fenced channel the test closes.
func (s *fakeSource) sendFenced(id, lane string, fence chan struct{}) *adapters.Delivery {
	return s.sendWith(&adapters.Delivery{ID: id, Payload: []byte(id), Source: "fake://t", Lane: lane, Fenced: fence})
}

func TestFencingStopsALaneButLetsThePushOnTheWireFinish(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	a, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		switch id {
		case "on-the-wire":
			entered <- struct{}{}
			<-release
		case "parked":
			w.WriteHeader(http.StatusInternalServerError) // retried until fenced
			return true
		}
		return false
	})
	src := newFakeSource()
	st := openStore(t)
	o := opts(url)
	o.Backoff = Backoff{Initial: time.Hour, Max: time.Hour, Multiplier: 2} // parked for good
	_, stop := start(t, src, st, o)
	fence := make(chan struct{})
	src.sendFenced("parked", "p1", fence)
	waitFor(t, "first push of parked", func() bool { return a.count("parked") == 1 })
	src.sendFenced("on-the-wire", "p0", fence)
	src.sendFenced("queued", "p0", fence) // behind it in the same lane
	<-entered
	close(fence) // the partition is being revoked
	waitFor(t, "parked abandoned", func() bool { return len(src.results("parked")) == 1 })
	close(release)
	waitFor(t, "all settled", func() bool { return src.settledCount() == 3 })
	if r := src.results("on-the-wire"); r[0] != nil {
		t.Fatalf("on-the-wire settled %v, want done (its push was on the wire)", r)
	}
	for _, id := range []string{"parked", "queued"} {
		if r := src.results(id); !errors.Is(r[0], adapters.ErrNotDone) {
			t.Fatalf("%s settled %v, want not done", id, r)
		}
	}
	if n := a.count("queued"); n != 0 {
		t.Fatalf("queued pushed %d times after its lane was fenced", n)
	}
	if n := a.count("parked"); n != 1 {
		t.Fatalf("parked pushed %d times, want 1 (never again once fenced)", n)
	}
	// The completion on the wire is recorded; the never-pushed mark is rolled back; the
	// pushed-and-abandoned one keeps saying it may have been pushed.
	waitFor(t, "records", func() bool {
		w, _ := st.Get("on-the-wire")
		q, _ := st.Get("queued")
		p, _ := st.Get("parked")
		return w.State == dedup.Completed && q.State == dedup.Unknown && p.State == dedup.InFlight
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestFencedDeliveryIsNeverDeadLettered(t *testing.T) {
	fence := make(chan struct{})
	_, url := newApp(t, func(_ string, _ int, w http.ResponseWriter) bool {
		close(fence) // fenced while the app answers: the permanent failure must not be dead-lettered
		w.WriteHeader(http.StatusBadRequest)
		return true
	})
	src := newFakeSource()
	o := opts(url)
	o.DeadLetter = true
	start(t, src, openStore(t), o)
	src.sendFenced("poison", "p0", fence)
	waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
	if r := src.results("poison"); !errors.Is(r[0], adapters.ErrNotDone) {
		t.Fatalf("settled %v, want not done", r)
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	if len(src.dls) != 0 {
		t.Fatalf("a fenced delivery was dead-lettered: %+v", src.dls)
	}
}

// sharedStore wraps the embedded store as a fleet's shared store would look to one replica:
// IDs in held are in flight at another live replica (Elsewhere) until released.
type sharedStore struct {
	*dedup.Store
	mu       sync.Mutex
	held     map[string]bool
	released map[string]bool // abandon wrote Released for these
}

func (s *sharedStore) Update(id string, f func(dedup.Entry) (dedup.Entry, bool), done func(dedup.Entry, error)) {
	s.Store.Update(id, func(prior dedup.Entry) (dedup.Entry, bool) {
		s.mu.Lock()
		prior.Elsewhere = s.held[id] && prior.State == dedup.InFlight
		s.mu.Unlock()
		next, write := f(prior)
		if write && next.Released {
			s.mu.Lock()
			s.released[id] = true
			s.mu.Unlock()
		}
		return next, write
	}, done)
}

func TestIDInFlightAtAnotherReplicaWaitsForIt(t *testing.T) {
	a, url := newApp(t, nil)
	src := newFakeSource()
	st := &sharedStore{Store: openStore(t), held: map[string]bool{"x": true, "y": true}, released: map[string]bool{}}
	// Another replica marked x and y in flight and is pushing them.
	if err := st.PutSync("x", dedup.Entry{State: dedup.InFlight, Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutSync("y", dedup.Entry{State: dedup.InFlight, Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	start(t, src, st, opts(url))
	src.send("x", "p0", "")
	src.send("y", "p1", "")
	src.send("z", "p2", "")
	waitFor(t, "z delivered", func() bool { return a.count("z") == 1 })
	time.Sleep(3 * elsewhereWait)
	if a.count("x")+a.count("y") != 0 {
		t.Fatalf("pushed an ID another live replica holds: x %d, y %d", a.count("x"), a.count("y"))
	}
	// The other replica completes x, and dies holding y (its lease ends).
	if err := st.PutSync("x", dedup.Entry{State: dedup.Completed, Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	st.held["y"] = false
	st.mu.Unlock()
	waitFor(t, "x and y settled", func() bool { return src.settledCount() == 3 })
	if n := a.count("x"); n != 0 {
		t.Fatalf("x pushed %d times; the other replica completed it", n)
	}
	h := a.headers("y")
	if len(h) != 1 || h[0].Get("ce-redelivered") != "true" || h[0].Get("ce-deliveryattempt") != "2" {
		t.Fatalf("y: %d pushes, want one flagged redelivered as attempt 2: %v", len(h), h)
	}
}

func TestAbandonReleasesTheClaim(t *testing.T) {
	_, url := newApp(t, func(_ string, _ int, w http.ResponseWriter) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	src := newFakeSource()
	st := &sharedStore{Store: openStore(t), held: map[string]bool{}, released: map[string]bool{}}
	o := opts(url)
	o.Backoff = Backoff{Initial: time.Hour, Max: time.Hour, Multiplier: 2}
	_, stop := start(t, src, st, o)
	src.send("retrying", "p0", "")
	waitFor(t, "parked", func() bool { e, _ := st.Get("retrying"); return e.Attempts == 1 && !e.NextAttempt.IsZero() })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "released", func() bool { st.mu.Lock(); defer st.mu.Unlock(); return st.released["retrying"] })
	if e, _ := st.Get("retrying"); e.State != dedup.InFlight {
		t.Fatalf("after abandon: %v, want in flight (it was pushed)", e.State)
	}
}

// silentStore answers admission marks only when marks is set, and never confirms a Put: a
// shared store whose server went away.
type silentStore struct{ marks bool }

func (s silentStore) Update(_ string, f func(dedup.Entry) (dedup.Entry, bool), done func(dedup.Entry, error)) {
	if s.marks && done != nil {
		f(dedup.Entry{})
		done(dedup.Entry{}, nil)
	}
}

func (silentStore) Put(string, dedup.Entry, func(error)) {}

func TestShutdownDoesNotWaitForAnUnansweredMark(t *testing.T) {
	a, url := newApp(t, nil)
	src := newFakeSource()
	o := opts(url)
	o.DrainTimeout = time.Minute
	_, stop := start(t, src, silentStore{}, o)
	src.send("waiting", "p0", "")
	waitFor(t, "admitted", func() bool { return src.reads.Load() == 1 })
	t0 := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Fatalf("shutdown took %v waiting for a mark the store never confirmed", took)
	}
	if r := src.results("waiting"); len(r) != 1 || !errors.Is(r[0], adapters.ErrNotDone) || a.count("waiting") != 0 {
		t.Fatalf("settled %v after %d pushes, want not done and never pushed", r, a.count("waiting"))
	}
}

func TestShutdownDoesNotWaitForeverForAnUnconfirmedCompletion(t *testing.T) {
	a, url := newApp(t, nil)
	src := newFakeSource()
	o := opts(url)
	o.DrainTimeout = 200 * time.Millisecond
	_, stop := start(t, src, silentStore{marks: true}, o)
	src.send("answered", "p0", "")
	waitFor(t, "pushed", func() bool { return a.count("answered") == 1 })
	t0 := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > o.DrainTimeout+storeGrace+2*time.Second {
		t.Fatalf("shutdown took %v", took)
	}
	if r := src.results("answered"); len(r) != 0 {
		t.Fatalf("settled %v although its completion was never recorded", r)
	}
}
