// Package storetest is the conformance suite of the dedup stores: the embedded bbolt store
// (package dedup) and the shared Redis store (package dedup/redisstore) must both pass it,
// so the ack gate can rely on one contract (see package dedup's doc): asynchronous requests,
// done exactly once, requests of one ID applied and answered in call order, a later write
// wins, Update's write=false leaves the record and State Unknown deletes it, a completed
// record is visible once its done ran, records expire TTL after their last write, and
// after Close every request fails with dedup.ErrClosed.
//
// The suite also holds the stores to the lifecycle of internal/lifecycle: it starts every
// store through Run; cancelling Run's context closes the store and Run returns nil; a
// store closed before Run ran answers every request queued, and a later Run returns at
// once.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
)

// TTL is the record lifetime that open must give the stores it returns: long enough for
// every case, short enough for the expiry case to wait it out.
const TTL = 3 * time.Second

// Store is what the suite exercises.
type Store interface {
	Update(id string, f func(prior dedup.Entry) (next dedup.Entry, write bool), done func(prior dedup.Entry, err error))
	Put(id string, e dedup.Entry, done func(error))
	Get(id string) (dedup.Entry, error)
	Close() error
	Run(ctx context.Context) error
}

// Run runs every case against stores from open, which must return a new store, not yet
// running (the suite calls its Run), empty (or at least without any ID the suite uses: the
// suite's IDs are unique per open), with a TTL of TTL. The suite closes the stores itself;
// open may register more cleanup with t.
func Run(t *testing.T, open func(t *testing.T) Store) {
	runEach(t, open, []suiteCase[Store]{
		{"UnknownPutGet", unknownPutGet},
		{"UpdateSemantics", updateSemantics},
		{"PerIDOrder", perIDOrder},
		{"CompletedVisibleAfterDone", completedVisibleAfterDone},
		{"DoneExactlyOnce", doneExactlyOnce},
		{"TTLExpiry", ttlExpiry},
		{"CloseThenErrClosed", closeThenErrClosed},
		{"Concurrent", concurrent},
	})
	t.Run("CancelCloses", func(t *testing.T) { cancelCloses(t, open(t)) })
	t.Run("CloseBeforeRun", func(t *testing.T) { closeBeforeRun(t, open(t)) })
}

// suiteCase is one case of a suite, run on a store of type S.
type suiteCase[S any] struct {
	name string
	fn   func(t *testing.T, s S)
}

// runEach runs every case as a subtest on a new store from open, started through its Run
// and closed when the subtest ends.
func runEach[S interface {
	Close() error
	Run(ctx context.Context) error
}](t *testing.T, open func(t *testing.T) S, cases []suiteCase[S]) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() { _ = s.Close() })
			lifecycletest.Start(t, s.Run)
			c.fn(t, s)
		})
	}
}

// cancelCloses: cancelling Run's context closes the store, as Close does: Run returns nil,
// what was committed before is answered, later requests fail with dedup.ErrClosed.
func cancelCloses(t *testing.T, s Store) {
	t.Cleanup(func() { _ = s.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	id := newID(t, "c")
	putSync(t, s, id, dedup.Entry{State: dedup.Completed})
	cancel()
	returnsNil(t, ran, "Run after its context ended")
	ch := make(chan error, 1)
	s.Put(id, dedup.Entry{State: dedup.InFlight}, func(err error) { ch <- err })
	if err := <-ch; !errors.Is(err, dedup.ErrClosed) {
		t.Fatalf("Put after Run's context ended: %v, want ErrClosed", err)
	}
}

// closeBeforeRun: a store closed before Run ran answers the requests queued meanwhile
// (committed or failed, exactly once) instead of hanging, and a later Run returns nil at
// once.
func closeBeforeRun(t *testing.T, s Store) {
	const n = 10
	done := make(chan error, n)
	for i := range n {
		s.Put(fmt.Sprintf("%s-%d", newID(t, "b"), i), dedup.Entry{State: dedup.Completed}, func(err error) { done <- err })
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case <-closed:
	case <-time.After(wait):
		t.Fatalf("Close before Run did not return within %s", wait)
	}
	for range n {
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, dedup.ErrClosed) {
				t.Fatalf("a Put queued before Run and Close: %v, want nil or ErrClosed", err)
			}
		case <-time.After(wait):
			t.Fatal("a Put queued before Run was never answered")
		}
	}
	ran := make(chan error, 1)
	go func() { ran <- s.Run(context.Background()) }()
	returnsNil(t, ran, "Run after Close")
}

// returnsNil fails t unless what (a Run) sends nil on ended within wait.
func returnsNil(t *testing.T, ended <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("%s: %v, want nil", what, err)
		}
	case <-time.After(wait):
		t.Fatalf("%s did not return within %s", what, wait)
	}
}

var idSeq atomic.Int64

// newID is unique per test run, so stores shared between runs (one Redis) never mix.
func newID(t *testing.T, what string) string {
	return fmt.Sprintf("st-%d-%d-%s", time.Now().UnixNano(), idSeq.Add(1), what)
}

const wait = 20 * time.Second // bound on any one done; a hung store fails instead of hanging

func putSync(t *testing.T, s Store, id string, e dedup.Entry) {
	t.Helper()
	ch := make(chan error, 1)
	s.Put(id, e, func(err error) { ch <- err })
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("Put(%q, %+v): %v", id, e, err)
		}
	case <-time.After(wait):
		t.Fatalf("Put(%q): done not called within %s", id, wait)
	}
}

func updateSync(t *testing.T, s Store, id string, f func(dedup.Entry) (dedup.Entry, bool)) dedup.Entry {
	t.Helper()
	type res struct {
		prior dedup.Entry
		err   error
	}
	ch := make(chan res, 1)
	s.Update(id, f, func(p dedup.Entry, err error) { ch <- res{p, err} })
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Update(%q): %v", id, r.err)
		}
		return r.prior
	case <-time.After(wait):
		t.Fatalf("Update(%q): done not called within %s", id, wait)
	}
	return dedup.Entry{}
}

func get(t *testing.T, s Store, id string) dedup.Entry {
	t.Helper()
	e, err := s.Get(id)
	if err != nil {
		t.Fatalf("Get(%q): %v", id, err)
	}
	return e
}

// same compares what a store must preserve: state, attempts, next attempt (to the
// millisecond: stores may keep milliseconds only).
func same(a, b dedup.Entry) bool {
	return a.State == b.State && a.Attempts == b.Attempts &&
		a.NextAttempt.Truncate(time.Millisecond).Equal(b.NextAttempt.Truncate(time.Millisecond)) &&
		a.NextAttempt.IsZero() == b.NextAttempt.IsZero()
}

func unknownPutGet(t *testing.T, s Store) {
	id := newID(t, "a")
	if e := get(t, s, id); e.State != dedup.Unknown || e.Attempts != 0 || e.Elsewhere {
		t.Fatalf("Get of a never written ID = %+v, want the zero Entry", e)
	}
	next := time.Now().Add(time.Minute)
	in := dedup.Entry{State: dedup.InFlight, Attempts: 2, NextAttempt: next}
	before := time.Now().Add(-time.Second)
	putSync(t, s, id, in)
	got := get(t, s, id)
	if !same(got, in) {
		t.Fatalf("Get after Put(%+v) = %+v", in, got)
	}
	if got.Updated.Before(before) || got.Updated.After(time.Now().Add(time.Second)) {
		t.Errorf("Updated = %v, want about now", got.Updated)
	}
	if got.Elsewhere {
		t.Errorf("Elsewhere set on a record this store wrote")
	}
	putSync(t, s, id, dedup.Entry{State: dedup.Completed, Attempts: 3})
	if got := get(t, s, id); got.State != dedup.Completed || got.Attempts != 3 || !got.NextAttempt.IsZero() {
		t.Fatalf("Get after Put(Completed, 3) = %+v", got)
	}
	// Put of Unknown deletes.
	putSync(t, s, id, dedup.Entry{})
	if got := get(t, s, id); got.State != dedup.Unknown {
		t.Fatalf("Get after Put(Unknown) = %+v, want Unknown", got)
	}
}

func updateSemantics(t *testing.T, s Store) {
	id := newID(t, "u")
	prior := updateSync(t, s, id, func(p dedup.Entry) (dedup.Entry, bool) {
		return dedup.Entry{State: dedup.InFlight, Attempts: p.Attempts + 1}, true
	})
	if prior.State != dedup.Unknown {
		t.Fatalf("first Update saw %+v, want Unknown", prior)
	}
	if got := get(t, s, id); got.State != dedup.InFlight || got.Attempts != 1 {
		t.Fatalf("after Update: %+v, want InFlight/1", got)
	}
	// write=false leaves the record as it is, whatever f returned.
	prior = updateSync(t, s, id, func(p dedup.Entry) (dedup.Entry, bool) {
		return dedup.Entry{State: dedup.Completed, Attempts: 99}, false
	})
	if prior.State != dedup.InFlight || prior.Attempts != 1 || prior.Elsewhere {
		t.Fatalf("second Update saw %+v, want InFlight/1 (not elsewhere)", prior)
	}
	if got := get(t, s, id); got.State != dedup.InFlight || got.Attempts != 1 {
		t.Fatalf("after write=false: %+v, want InFlight/1 unchanged", got)
	}
	// Update sees a Put queued before it, before that Put is done.
	var putDone atomic.Bool
	s.Put(id, dedup.Entry{State: dedup.InFlight, Attempts: 7}, func(err error) {
		if err != nil {
			t.Errorf("Put: %v", err)
		}
		putDone.Store(true)
	})
	prior = updateSync(t, s, id, func(p dedup.Entry) (dedup.Entry, bool) { return p, false })
	if prior.Attempts != 7 {
		t.Fatalf("Update after a queued Put saw %+v, want the Put's 7 attempts", prior)
	}
	if !putDone.Load() {
		t.Fatalf("Update's done ran before the done of the Put queued before it")
	}
	// next.State Unknown deletes.
	updateSync(t, s, id, func(dedup.Entry) (dedup.Entry, bool) { return dedup.Entry{}, true })
	if got := get(t, s, id); got.State != dedup.Unknown {
		t.Fatalf("after Update to Unknown: %+v, want deleted", got)
	}
	// An invalid next fails that request alone.
	ch := make(chan error, 1)
	s.Update(id, func(dedup.Entry) (dedup.Entry, bool) { return dedup.Entry{State: dedup.InFlight, Attempts: -1}, true },
		func(_ dedup.Entry, err error) { ch <- err })
	if err := <-ch; !errors.Is(err, dedup.ErrInvalid) {
		t.Fatalf("Update to a negative attempt count: %v, want ErrInvalid", err)
	}
	if got := get(t, s, id); got.State != dedup.Unknown {
		t.Fatalf("after an invalid Update: %+v, want still deleted", got)
	}
}

func perIDOrder(t *testing.T, s Store) {
	const ids, rounds = 4, 25
	var mu sync.Mutex
	order := map[string][]int{} // id → sequence numbers in callback order
	var wg sync.WaitGroup
	var names [ids]string
	for i := range names {
		names[i] = newID(t, fmt.Sprintf("o%d", i))
	}
	seen := make([][]int, ids) // attempts each Update saw, per id
	record := func(id string, seq int) {
		mu.Lock()
		order[id] = append(order[id], seq)
		mu.Unlock()
		wg.Done()
	}
	seq := 0
	for r := range rounds {
		for i, id := range names {
			seq++
			n := seq
			wg.Add(1)
			if r%2 == 0 {
				s.Put(id, dedup.Entry{State: dedup.InFlight, Attempts: n}, func(err error) {
					if err != nil {
						t.Errorf("Put: %v", err)
					}
					record(id, n)
				})
			} else {
				s.Update(id, func(p dedup.Entry) (dedup.Entry, bool) {
					return dedup.Entry{State: dedup.InFlight, Attempts: n}, true
				}, func(p dedup.Entry, err error) {
					if err != nil {
						t.Errorf("Update: %v", err)
					}
					mu.Lock()
					seen[i] = append(seen[i], p.Attempts)
					mu.Unlock()
					record(id, n)
				})
			}
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("not every done was called")
	}
	for i, id := range names {
		got := order[id]
		for j := 1; j < len(got); j++ {
			if got[j] <= got[j-1] {
				t.Fatalf("%s: callbacks out of call order: %v", id, got)
			}
		}
		// Each Update saw the write called just before it (a Put of the same id, ids
		// requests earlier in sequence).
		for k, a := range seen[i] {
			if want := (2*k)*ids + i + 1; a != want {
				t.Fatalf("%s: Update %d saw attempts %d, want %d (the write called before it)", id, k, a, want)
			}
		}
		last := (rounds-1)*ids + i + 1
		if e := get(t, s, id); e.Attempts != last {
			t.Fatalf("%s: final attempts %d, want the last write's %d", id, e.Attempts, last)
		}
	}
}

func completedVisibleAfterDone(t *testing.T, s Store) {
	const n = 50
	ids := make([]string, n)
	dones := make(chan string, n)
	for i := range ids {
		ids[i] = newID(t, fmt.Sprintf("c%d", i))
		id := ids[i]
		s.Put(id, dedup.Entry{State: dedup.Completed, Attempts: 1}, func(err error) {
			if err != nil {
				t.Errorf("Put: %v", err)
			}
			dones <- id
		})
	}
	for range n {
		select {
		case id := <-dones:
			if e := get(t, s, id); e.State != dedup.Completed {
				t.Fatalf("%s: Get after done = %+v, want Completed", id, e)
			}
		case <-time.After(wait):
			t.Fatal("done not called")
		}
	}
}

func doneExactlyOnce(t *testing.T, s Store) {
	const n = 200
	counts := make([]atomic.Int32, n)
	var wg sync.WaitGroup
	wg.Add(n)
	id := newID(t, "x")
	for i := range n {
		c := &counts[i]
		switch i % 3 {
		case 0:
			s.Put(fmt.Sprintf("%s-%d", id, i%7), dedup.Entry{State: dedup.InFlight, Attempts: i}, func(error) { c.Add(1); wg.Done() })
		case 1:
			s.Update(fmt.Sprintf("%s-%d", id, i%7), func(p dedup.Entry) (dedup.Entry, bool) {
				return dedup.Entry{State: dedup.Completed, Attempts: p.Attempts + 1}, i%2 == 0
			}, func(dedup.Entry, error) { c.Add(1); wg.Done() })
		default:
			s.Update(fmt.Sprintf("%s-%d", id, i%7), func(dedup.Entry) (dedup.Entry, bool) { return dedup.Entry{}, true },
				func(dedup.Entry, error) { c.Add(1); wg.Done() })
		}
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // a second call would come now
	for i := range counts {
		if c := counts[i].Load(); c != 1 {
			t.Fatalf("request %d: done called %d times", i, c)
		}
	}
}

func ttlExpiry(t *testing.T, s Store) {
	id, refreshed := newID(t, "t"), newID(t, "r")
	putSync(t, s, id, dedup.Entry{State: dedup.Completed, Attempts: 1})
	putSync(t, s, refreshed, dedup.Entry{State: dedup.Completed, Attempts: 1})
	time.Sleep(TTL / 2)
	if e := get(t, s, id); e.State != dedup.Completed {
		t.Fatalf("after TTL/2: %+v, want still Completed", e)
	}
	putSync(t, s, refreshed, dedup.Entry{State: dedup.Completed, Attempts: 2}) // a write restarts the TTL
	time.Sleep(TTL/2 + 500*time.Millisecond)
	if e := get(t, s, id); e.State != dedup.Unknown {
		t.Fatalf("after TTL: %+v, want Unknown (expired)", e)
	}
	if e := get(t, s, refreshed); e.State != dedup.Completed || e.Attempts != 2 {
		t.Fatalf("TTL after the last write not over yet, but Get = %+v, want Completed/2", e)
	}
}

func closeThenErrClosed(t *testing.T, s Store) {
	id := newID(t, "z")
	putSync(t, s, id, dedup.Entry{State: dedup.Completed})
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v, want the first call's nil", err)
	}
	ch := make(chan error, 2)
	s.Put(id, dedup.Entry{State: dedup.InFlight}, func(err error) { ch <- err })
	s.Update(id, func(p dedup.Entry) (dedup.Entry, bool) {
		t.Error("f called after Close")
		return p, false
	}, func(_ dedup.Entry, err error) { ch <- err })
	for range 2 {
		if err := <-ch; !errors.Is(err, dedup.ErrClosed) {
			t.Fatalf("request after Close: %v, want ErrClosed", err)
		}
	}
	if _, err := s.Get(id); !errors.Is(err, dedup.ErrClosed) {
		t.Fatalf("Get after Close: %v, want ErrClosed", err)
	}
}

func concurrent(t *testing.T, s Store) {
	const workers, each = 8, 40
	shared := newID(t, "shared")
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*3)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var inner sync.WaitGroup
			for i := range each {
				own := fmt.Sprintf("%s-w%d-%d", shared, w, i)
				inner.Add(3)
				// A read-modify-write on one shared ID from every worker: no lost update.
				s.Update(shared, func(p dedup.Entry) (dedup.Entry, bool) {
					return dedup.Entry{State: dedup.InFlight, Attempts: p.Attempts + 1}, true
				}, func(_ dedup.Entry, err error) {
					if err != nil {
						errs <- err
					}
					inner.Done()
				})
				s.Update(own, func(p dedup.Entry) (dedup.Entry, bool) {
					if p.State != dedup.Unknown {
						errs <- fmt.Errorf("%s: first Update saw %+v", own, p)
					}
					return dedup.Entry{State: dedup.InFlight, Attempts: 1}, true
				}, func(_ dedup.Entry, err error) {
					if err != nil {
						errs <- err
					}
					inner.Done()
				})
				s.Put(own, dedup.Entry{State: dedup.Completed, Attempts: 1}, func(err error) {
					if err != nil {
						errs <- err
					}
					inner.Done()
				})
			}
			inner.Wait()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if e := get(t, s, shared); e.Attempts != workers*each {
		t.Fatalf("shared ID: %d attempts after %d increments", e.Attempts, workers*each)
	}
	for w := range workers {
		for i := range each {
			own := fmt.Sprintf("%s-w%d-%d", shared, w, i)
			if e := get(t, s, own); e.State != dedup.Completed {
				t.Fatalf("%s: %+v, want Completed", own, e)
			}
		}
	}
}
