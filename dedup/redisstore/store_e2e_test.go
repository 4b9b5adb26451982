//go:build e2e

package redisstore

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/dedup/storetest"
)

// TestConformance runs the store suite against the harness Redis.
func TestConformance(t *testing.T) {
	addr := harnessRedis(t)
	storetest.Run(t, func(t *testing.T) storetest.Store {
		return newStore(t, addr, prefix(), func(o *Options) { o.TTL = storetest.TTL })
	})
}

func take(t *testing.T, s *Store, id string) dedup.Entry {
	t.Helper()
	type res struct {
		p   dedup.Entry
		err error
	}
	ch := make(chan res, 1)
	s.Update(id, func(p dedup.Entry) (dedup.Entry, bool) {
		if p.Elsewhere || p.State == dedup.Completed {
			return p, false
		}
		return dedup.Entry{State: dedup.InFlight, Attempts: p.Attempts + 1}, true
	}, func(p dedup.Entry, err error) { ch <- res{p, err} })
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Update(%q): %v", id, r.err)
		}
		return r.p
	case <-time.After(10 * time.Second):
		t.Fatalf("Update(%q): no done", id)
	}
	return dedup.Entry{}
}

// Two owners on one Redis: a record in flight at A is Elsewhere for B while A's lease
// lives, and handed over (not Elsewhere, attempts kept) once A died and the lease expired.
func TestElsewhereUntilLeaseExpires(t *testing.T) {
	addr, p := harnessRedis(t), prefix()
	a := open(t, addr, p, func(o *Options) { o.Lease = 1500 * time.Millisecond })
	b := open(t, addr, p, nil)
	if a.Owner() == b.Owner() {
		t.Fatalf("two stores share the owner %q", a.Owner())
	}
	if prior := take(t, a, "m1"); prior.State != dedup.Unknown {
		t.Fatalf("A saw %+v, want Unknown", prior)
	}
	if prior := take(t, b, "m1"); !prior.Elsewhere || prior.State != dedup.InFlight {
		t.Fatalf("B saw %+v, want InFlight elsewhere", prior)
	}
	if e, _ := b.Get("m1"); !e.Elsewhere {
		t.Fatalf("B's Get: %+v, want Elsewhere", e)
	}
	if e, _ := a.Get("m1"); e.Elsewhere {
		t.Fatalf("A's Get of its own record: %+v, want not Elsewhere", e)
	}
	// A dies: no release, no renewal.
	a.noRelease.Store(true)
	_ = a.Close()
	if prior := take(t, b, "m1"); !prior.Elsewhere {
		t.Fatalf("B right after A died: %+v, want still Elsewhere (lease not expired)", prior)
	}
	time.Sleep(1600 * time.Millisecond)
	prior := take(t, b, "m1")
	if prior.Elsewhere || prior.State != dedup.InFlight || prior.Attempts != 1 {
		t.Fatalf("B after A's lease expired: %+v, want InFlight, 1 attempt, not elsewhere", prior)
	}
	// B holds it now.
	c := open(t, addr, p, nil)
	if prior := take(t, c, "m1"); !prior.Elsewhere || prior.Attempts != 2 {
		t.Fatalf("C saw %+v, want B's record (2 attempts) elsewhere", prior)
	}
}

// Close releases the leases: another replica takes over at once.
func TestCloseReleases(t *testing.T) {
	addr, p := harnessRedis(t), prefix()
	a := open(t, addr, p, nil) // 30 s lease
	b := open(t, addr, p, nil)
	take(t, a, "m1")
	take(t, a, "m2")
	a.Put("m2", dedup.Entry{State: dedup.Completed, Attempts: 1}, nil)
	ch := make(chan error, 1)
	a.Release("m3", func(err error) { ch <- err }) // not held: nothing happens
	if err := <-ch; err != nil {
		t.Fatalf("Release of a record not held: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if prior := take(t, b, "m1"); prior.Elsewhere || prior.State != dedup.InFlight || prior.Attempts != 1 {
		t.Fatalf("B after A's Close: %+v, want InFlight, not elsewhere", prior)
	}
	if prior := take(t, b, "m2"); prior.State != dedup.Completed {
		t.Fatalf("B: %+v, want Completed", prior)
	}
}

// An InFlight write with Released (the gate abandoning a pushed message) keeps the record
// but no lease: another replica takes it at once, and the writer stops renewing it.
func TestReleasedWrite(t *testing.T) {
	addr, p := harnessRedis(t), prefix()
	a := open(t, addr, p, nil)
	b := open(t, addr, p, nil)
	take(t, a, "r1")
	if n := ownedLen(a); n != 1 {
		t.Fatalf("A holds %d records, want 1", n)
	}
	ch := make(chan error, 1)
	a.Update("r1", func(cur dedup.Entry) (dedup.Entry, bool) {
		cur.Released = true
		return cur, true
	}, func(_ dedup.Entry, err error) { ch <- err })
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	if n := ownedLen(a); n != 0 {
		t.Fatalf("A still renews %d records after releasing", n)
	}
	prior := take(t, b, "r1")
	if prior.Elsewhere || prior.State != dedup.InFlight || prior.Attempts != 1 || prior.Released {
		t.Fatalf("B after A released: %+v, want InFlight, 1 attempt, not elsewhere", prior)
	}
}

// Renewal keeps a record held far longer than its lease; Completed ends the hold.
func TestRenewalKeepsHold(t *testing.T) {
	addr, p := harnessRedis(t), prefix()
	a := open(t, addr, p, func(o *Options) { o.Lease = time.Second })
	b := open(t, addr, p, nil)
	take(t, a, "long")
	time.Sleep(3500 * time.Millisecond) // more than three leases
	if prior := take(t, b, "long"); !prior.Elsewhere {
		t.Fatalf("B after 3 leases: %+v, want still Elsewhere (A renews)", prior)
	}
	if err := a.PutSync("long", dedup.Entry{State: dedup.Completed, Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	if prior := take(t, b, "long"); prior.Elsewhere || prior.State != dedup.Completed {
		t.Fatalf("B after A completed: %+v, want Completed", prior)
	}
	if n := ownedLen(a); n != 0 {
		t.Fatalf("A still renews %d records after completing them", n)
	}
}

func ownedLen(s *Store) int {
	ch := make(chan int, 1)
	// The writer owns the map; ask it through the queue (its done runs on the writer).
	s.Release("\x00probe", func(error) { ch <- len(s.owned) })
	return <-ch
}

// A compare-and-set that finds another replica's write calls f again with that write.
func TestConflictCallsFAgain(t *testing.T) {
	addr, p := harnessRedis(t), prefix()
	a := open(t, addr, p, nil)
	b := open(t, addr, p, nil)
	var calls []dedup.Entry
	ch := make(chan dedup.Entry, 1)
	a.Update("c1", func(prior dedup.Entry) (dedup.Entry, bool) {
		calls = append(calls, prior)
		if len(calls) == 1 {
			// Between A's read and A's write, B records the ID in flight.
			if err := b.PutSync("c1", dedup.Entry{State: dedup.InFlight, Attempts: 5}); err != nil {
				t.Error(err)
			}
		}
		if prior.Elsewhere {
			return prior, false
		}
		return dedup.Entry{State: dedup.InFlight, Attempts: prior.Attempts + 1}, true
	}, func(prior dedup.Entry, err error) {
		if err != nil {
			t.Error(err)
		}
		ch <- prior
	})
	prior := <-ch
	if len(calls) != 2 || calls[0].State != dedup.Unknown || !calls[1].Elsewhere || calls[1].Attempts != 5 {
		t.Fatalf("f saw %+v, want Unknown then B's record elsewhere", calls)
	}
	if !prior.Elsewhere {
		t.Fatalf("done got %+v, want the prior of the last call", prior)
	}
	if e, _ := b.Get("c1"); e.Attempts != 5 || e.Elsewhere {
		t.Fatalf("record: %+v, want B's, untouched", e)
	}
}

// Redis killed and restarted mid-run: requests wait (no done, no error), Ready reports,
// everything resumes by itself, and every ID reported done is stored.
func TestRedisDownAndBack(t *testing.T) {
	srv := startServer(t)
	s := open(t, srv.addr, prefix(), func(o *Options) { o.Timeout = 500 * time.Millisecond })
	var (
		mu       sync.Mutex
		acked    []string
		failures atomic.Int64
		issued   atomic.Int64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("id-%d", i)
			issued.Add(1)
			s.Put(id, dedup.Entry{State: dedup.Completed, Attempts: 1}, func(err error) {
				if err != nil {
					failures.Add(1)
					return
				}
				mu.Lock()
				acked = append(acked, id)
				mu.Unlock()
			})
			time.Sleep(200 * time.Microsecond)
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitFor(t, 5*time.Second, "some writes", func() bool { return count() > 100 })
	srv.stop(true) // kill -9
	waitFor(t, 5*time.Second, "Ready to report the outage", func() bool { return s.Ready() != nil })
	t.Logf("while down, Ready: %v", s.Ready())
	time.Sleep(300 * time.Millisecond) // whatever was in flight at the kill has settled
	before := count()
	time.Sleep(time.Second)
	if after := count(); after != before {
		t.Fatalf("%d requests reported done while Redis was down", after-before)
	}
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d requests failed with a transient error", f)
	}
	srv.start()
	waitFor(t, 10*time.Second, "Ready after the restart", func() bool { return s.Ready() == nil })
	waitFor(t, 10*time.Second, "writes to resume", func() bool { return count() > before+100 })
	close(stop)
	wg.Wait()
	waitFor(t, 10*time.Second, "every request done", func() bool { return int64(count()) == issued.Load() })
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d requests failed", f)
	}
	mu.Lock()
	ids := append([]string(nil), acked...)
	mu.Unlock()
	for _, id := range ids {
		e, err := s.Get(id)
		if err != nil || e.State != dedup.Completed {
			t.Fatalf("%s was reported done but Redis has %+v (%v)", id, e, err)
		}
	}
	t.Logf("%d writes, all stored; %d acknowledged before the kill", len(ids), before)
}

// Close while Redis is down ends the retries: queued requests get ErrClosed.
func TestCloseWhileDown(t *testing.T) {
	srv := startServer(t)
	s := open(t, srv.addr, prefix(), func(o *Options) { o.Timeout = 300 * time.Millisecond })
	srv.stop(true)
	ch := make(chan error, 3)
	for i := range 3 {
		s.Put(fmt.Sprint("k", i), dedup.Entry{State: dedup.Completed}, func(err error) { ch <- err })
	}
	select {
	case err := <-ch:
		t.Fatalf("done(%v) while Redis is down", err)
	case <-time.After(500 * time.Millisecond):
	}
	began := time.Now()
	_ = s.Close()
	for range 3 {
		if err := <-ch; !errors.Is(err, dedup.ErrClosed) {
			t.Fatalf("after Close: %v, want ErrClosed", err)
		}
	}
	if d := time.Since(began); d > 3*time.Second {
		t.Fatalf("Close took %s while Redis was down", d)
	}
}

// With wait_replicas > 0 the local fsync is not required (TestStartNotDurable covers 0), but
// nothing is reported durable until a replica acknowledged it.
func TestDurabilityCheck(t *testing.T) {
	srv := startServer(t, "--appendfsync", "everysec", "--appendonly", "no")
	// Waiting for replicas is accepted without the local fsync.
	s, err := New(Options{Addrs: []string{srv.addr}, KeyPrefix: prefix(), TTL: time.Minute, Logger: quiet, WaitReplicas: 1, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatalf("New with wait_replicas 1: %v", err)
	}
	defer s.Close()
	go func() { _ = s.Run(t.Context()) }() // the deferred Close ends it
	// ... but with no replica, nothing is reported durable.
	done := make(chan error, 1)
	s.Put("w", dedup.Entry{State: dedup.Completed}, func(err error) { done <- err })
	select {
	case err := <-done:
		t.Fatalf("done(%v) without a replica", err)
	case <-time.After(1500 * time.Millisecond):
	}
	if err := s.Ready(); err == nil || !strings.Contains(err.Error(), "WAIT: 0 of 1") {
		t.Fatalf("Ready: %v, want the WAIT shortfall", err)
	}
	// A replica appears: the write is acknowledged by it and reported done.
	startServer(t, "--replicaof", strings.Replace(srv.addr, ":", " ", 1))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no done after a replica joined; Ready: %v", s.Ready())
	}
	waitFor(t, 5*time.Second, "Ready", func() bool { return s.Ready() == nil })
}

// A server reconfigured at run time to appendfsync everysec: writes are held (no done) and
// Ready says why, until it is durable again.
func TestDurabilityLostAtRunTime(t *testing.T) {
	old := recheckEvery
	recheckEvery = 200 * time.Millisecond
	t.Cleanup(func() { recheckEvery = old }) // after the store's Close (cleanups run last first)
	srv := startServer(t)
	s := open(t, srv.addr, prefix(), nil)
	c := client(t, srv.addr)
	ctx, cancel := ctxTimeout(5 * time.Second)
	defer cancel()
	if err := c.ConfigSet(ctx, "appendfsync", "everysec").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "Ready to report appendfsync", func() bool {
		err := s.Ready()
		return err != nil && strings.Contains(err.Error(), "appendfsync")
	})
	done := make(chan error, 1)
	s.Put("d1", dedup.Entry{State: dedup.Completed}, func(err error) { done <- err })
	select {
	case err := <-done:
		t.Fatalf("done(%v) while the server does not fsync", err)
	case <-time.After(time.Second):
	}
	if err := c.ConfigSet(ctx, "appendfsync", "always").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no done after appendfsync always again; Ready: %v", s.Ready())
	}
	waitFor(t, 5*time.Second, "Ready", func() bool { return s.Ready() == nil })
}
