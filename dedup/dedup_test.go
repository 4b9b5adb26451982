package dedup

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
)

// fakeClock is an injectable clock for TTL tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var quiet = slog.New(slog.DiscardHandler)

func openT(t testing.TB, path string, opts Options) *Store {
	t.Helper()
	if opts.TTL == 0 {
		opts.TTL = time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	lifecycletest.Start(t, s.Run)
	return s
}

func mustGet(t testing.TB, s *Store, id string) Entry {
	t.Helper()
	e, err := s.Get(id)
	if err != nil {
		t.Fatalf("Get(%q): %v", id, err)
	}
	return e
}

func mustPut(t testing.TB, s *Store, id string, e Entry) {
	t.Helper()
	if err := s.PutSync(id, e); err != nil {
		t.Fatalf("PutSync(%q): %v", id, err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPutGetDelete(t *testing.T) {
	clk := newFakeClock()
	s := openT(t, filepath.Join(t.TempDir(), "sub", "dir", "dedup.db"), Options{Now: clk.Now})

	if e := mustGet(t, s, "m1"); e != (Entry{}) {
		t.Fatalf("unseen id: got %+v, want zero Entry", e)
	}
	next := clk.Now().Add(3 * time.Second)
	mustPut(t, s, "m1", Entry{State: InFlight, Attempts: 3, NextAttempt: next, Updated: time.Unix(1, 0)})
	e := mustGet(t, s, "m1")
	if e.State != InFlight || e.Attempts != 3 || !e.NextAttempt.Equal(next) || !e.Updated.Equal(clk.Now()) {
		t.Fatalf("got %+v, want InFlight/3/%v updated by the store at %v", e, next, clk.Now())
	}

	clk.Advance(time.Second)
	mustPut(t, s, "m1", Entry{State: Completed, Attempts: 4})
	e = mustGet(t, s, "m1")
	if e.State != Completed || e.Attempts != 4 || !e.NextAttempt.IsZero() || !e.Updated.Equal(clk.Now()) {
		t.Fatalf("got %+v, want Completed/4, no next attempt", e)
	}
	if st := s.Stats(); st.Entries != 1 || st.Slices != 1 || st.Commits < 2 || st.FileBytes == 0 {
		t.Fatalf("stats %+v: want 1 entry in 1 slice, >= 2 commits, file size", st)
	}

	mustPut(t, s, "m1", Entry{State: Unknown})
	if e := mustGet(t, s, "m1"); e != (Entry{}) {
		t.Fatalf("deleted id: got %+v", e)
	}
	if st := s.Stats(); st.Entries != 0 {
		t.Fatalf("stats after delete: %d entries, want 0", st.Entries)
	}
	// Deleting an unknown ID is fine.
	mustPut(t, s, "never-seen", Entry{State: Unknown})
}

func TestOnCommit(t *testing.T) {
	type call struct {
		records int
		took    time.Duration
		entries int64
	}
	calls := make(chan call, 16)
	s := openT(t, filepath.Join(t.TempDir(), "dedup.db"), Options{OnCommit: func(records int, took time.Duration, entries int64) {
		calls <- call{records, took, entries}
	}})
	mustPut(t, s, "a", Entry{State: InFlight, Attempts: 1})
	mustPut(t, s, "b", Entry{State: Completed, Attempts: 1})
	mustPut(t, s, "a", Entry{State: Completed, Attempts: 1})
	for i, want := range []int64{1, 2, 2} {
		c := <-calls
		if c.records != 1 || c.took <= 0 || c.entries != want {
			t.Fatalf("commit %d: OnCommit(%d, %v, %d), want (1, > 0, %d)", i+1, c.records, c.took, c.entries, want)
		}
	}
}

// TestMaxLingerUntilFlush: with MaxLinger, a batch nobody waits for waits for more records
// (up to MaxLinger, or until it is full); Flush commits it at once, for one batch only, and
// Close does not wait for the linger either.
func TestMaxLingerUntilFlush(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "dedup.db"), Options{MaxLinger: time.Hour, MaxBatch: 4})
	put := func(id string) chan error {
		done := make(chan error, 1)
		s.Put(id, Entry{State: Completed, Attempts: 1}, func(err error) { done <- err })
		return done
	}
	waitDone := func(what string, done chan error) {
		t.Helper()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not committed after 10s", what)
		}
	}
	notDone := func(what string, done chan error) {
		t.Helper()
		select {
		case err := <-done:
			t.Fatalf("%s: committed (%v) although nobody flushed and the batch is not full", what, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, id := range []string{"a", "b"} { // the second batch needs a Flush of its own
		done := put(id)
		notDone(id, done)
		s.Flush()
		waitDone(id+" after Flush", done)
	}
	var full []chan error
	for i := range 4 {
		full = append(full, put(fmt.Sprint("full-", i)))
	}
	for i, done := range full {
		waitDone(fmt.Sprint("full-", i, " (a full batch)"), done)
	}
	last := put("at-close")
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	waitDone("at-close", last)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// TestUpdate: f sees what Get would (records queued before it included, expired ones as
// Unknown), its choice is written or not, and done reports the prior entry after the commit.
func TestUpdate(t *testing.T) {
	clk := newFakeClock()
	s := openT(t, filepath.Join(t.TempDir(), "dedup.db"), Options{TTL: time.Hour, Now: clk.Now})
	update := func(id string, f func(Entry) (Entry, bool)) (Entry, error) {
		type res struct {
			prior Entry
			err   error
		}
		ch := make(chan res, 1)
		s.Update(id, f, func(prior Entry, err error) { ch <- res{prior, err} })
		r := <-ch
		return r.prior, r.err
	}
	mark := func(prior Entry) (Entry, bool) {
		if prior.State == Completed {
			return Entry{}, false
		}
		return Entry{State: InFlight, Attempts: prior.Attempts + 1}, true
	}

	prior, err := update("a", mark)
	if err != nil || prior != (Entry{}) {
		t.Fatalf("first update: prior %+v, %v; want Unknown", prior, err)
	}
	if e := mustGet(t, s, "a"); e.State != InFlight || e.Attempts != 1 {
		t.Fatalf("after update: %+v, want InFlight/1", e)
	}
	prior, err = update("a", mark)
	if err != nil || prior.State != InFlight || prior.Attempts != 1 || !prior.Updated.Equal(clk.Now()) {
		t.Fatalf("second update saw %+v, %v; want InFlight/1 written at %v", prior, err, clk.Now())
	}
	mustPut(t, s, "a", Entry{State: Completed, Attempts: 2})
	if prior, err = update("a", mark); err != nil || prior.State != Completed {
		t.Fatalf("update of a completed id saw %+v, %v", prior, err)
	}
	if e := mustGet(t, s, "a"); e.State != Completed || e.Attempts != 2 {
		t.Fatalf("write=false changed the record: %+v", e)
	}
	if st := s.Stats(); st.Entries != 1 {
		t.Fatalf("%d entries, want 1 (rewrites of one id count once)", st.Entries)
	}

	// Queued together: the second sees the first (same batch or not).
	ch := make(chan Entry, 2)
	s.Update("b", mark, func(p Entry, err error) { ch <- p })
	s.Update("b", mark, func(p Entry, err error) { ch <- p })
	if p1, p2 := <-ch, <-ch; p1.State != Unknown || p2.State != InFlight || p2.Attempts != 1 {
		t.Fatalf("queued updates saw %+v then %+v", p1, p2)
	}

	// An expired record is Unknown to f, as to Get.
	clk.Advance(time.Hour)
	if prior, err = update("a", mark); err != nil || prior != (Entry{}) {
		t.Fatalf("update after the TTL saw %+v, %v; want Unknown", prior, err)
	}

	// Invalid choices and ids fail the request alone.
	if _, err = update("b", func(Entry) (Entry, bool) { return Entry{}, true }); err != nil || mustGet(t, s, "b") != (Entry{}) {
		t.Fatalf("update to Unknown: %v, %+v left; want the record deleted", err, mustGet(t, s, "b"))
	}
	if _, err = update("c", func(Entry) (Entry, bool) { return Entry{State: 9}, true }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("update to state 9: %v, want ErrInvalid", err)
	}
	if _, err = update("", mark); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty id: %v, want ErrInvalid", err)
	}
	s.Close()
	if _, err = update("d", mark); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}

// TestUpdateOfANewIDSearchesOnce: the mark of an ID the store does not know (the common
// case, once per message) looks the key up once per slice and writes it; the lookup found it
// in no slice, so the count is kept without looking again (a bbolt search less per message).
func TestUpdateOfANewIDSearchesOnce(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "dedup.db"), Options{TTL: time.Hour})
	mustPut(t, s, "warm", Entry{State: Completed}) // opens the slice
	cursors := func(f func()) int64 {
		count := func() int64 { st := s.db.Stats(); return st.TxStats.GetCursorCount() }
		before := count()
		f()
		return count() - before
	}
	put := cursors(func() { mustPut(t, s, "p", Entry{State: InFlight}) })
	upd := cursors(func() {
		done := make(chan error, 1)
		s.Update("u", func(Entry) (Entry, bool) { return Entry{State: InFlight, Attempts: 1}, true },
			func(_ Entry, err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	// A Put of a new key looks once (is it counted?) and writes; so does the Update.
	if upd > put {
		t.Fatalf("an Update of a new ID used %d bbolt cursors, a Put %d", upd, put)
	}
	mustPut(t, s, "u", Entry{State: Completed})
	if st := s.Stats(); st.Entries != 3 {
		t.Fatalf("%d entries, want 3", st.Entries)
	}
}

// TestLookupsReuseOneCursor: the writer's lookups in a slice share one bbolt cursor per
// transaction (bbolt's Get makes a cursor, and grows its stack, each time): a commit of 100
// marks of new IDs opens about one cursor per write, not two — and still sees every write
// made before it in the same commit.
func TestLookupsReuseOneCursor(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "dedup.db"), Options{TTL: time.Hour, MaxLinger: time.Hour, MaxBatch: 1000})
	warm := make(chan error, 1)
	s.Put("warm", Entry{State: Completed}, func(err error) { warm <- err }) // opens the slice
	s.Flush()
	if err := <-warm; err != nil {
		t.Fatal(err)
	}
	count := func() int64 { st := s.db.Stats(); return st.TxStats.GetCursorCount() }
	before := count()
	const n = 100
	priors := make(chan Entry, 2*n)
	mark := func(prior Entry) (Entry, bool) { return Entry{State: InFlight, Attempts: prior.Attempts + 1}, true }
	for i := range n {
		s.Update(fmt.Sprint("id-", i), mark, func(p Entry, err error) {
			if err != nil {
				t.Error(err)
			}
			priors <- p
		})
	}
	for i := range n { // the same IDs again, in the same commit: each sees the first mark
		s.Update(fmt.Sprint("id-", i), mark, func(p Entry, err error) { priors <- p })
	}
	s.Flush()
	seen := 0
	for range 2 * n {
		if p := <-priors; p.State == InFlight && p.Attempts == 1 {
			seen++
		}
	}
	if seen != n {
		t.Fatalf("%d of the second marks saw the first, want %d", seen, n)
	}
	// Each write's own Put opens a cursor; the lookups share one.
	if c := count() - before; c > 2*n+20 {
		t.Fatalf("%d bbolt cursors for %d writes and their lookups, want about one per write", c, 2*n)
	}
	if st := s.Stats(); st.Entries != n+1 {
		t.Fatalf("%d entries, want %d", st.Entries, n+1)
	}
}

func TestInvalid(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "d.db"), Options{})
	for name, tc := range map[string]struct {
		id string
		e  Entry
	}{
		"empty id":          {"", Entry{State: Completed}},
		"huge id":           {strings.Repeat("x", MaxIDLen+1), Entry{State: Completed}},
		"negative attempts": {"a", Entry{State: InFlight, Attempts: -1}},
		"unknown state":     {"a", Entry{State: 9}},
	} {
		if err := s.PutSync(tc.id, tc.e); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: PutSync err = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := s.Get(""); !errors.Is(err, ErrInvalid) {
		t.Errorf("Get(\"\") err = %v, want ErrInvalid", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "x.db"), Options{}); err == nil || !strings.Contains(err.Error(), "ttl") {
		t.Errorf("Open without TTL: err = %v, want a ttl error", err)
	}
}

func TestRestartPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dedup.db")
	clk := newFakeClock()
	s := openT(t, path, Options{Now: clk.Now, TTL: 24 * time.Hour})
	next := clk.Now().Add(time.Minute)
	const n = 500
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		st := Completed
		if i%2 == 1 {
			st = InFlight
		}
		s.Put(fmt.Sprintf("id-%d", i), Entry{State: st, Attempts: i, NextAttempt: next}, func(err error) {
			if err != nil {
				t.Errorf("put %d: %v", i, err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	clk.Advance(time.Hour)
	s2 := openT(t, path, Options{Now: clk.Now, TTL: 24 * time.Hour})
	for i := range n {
		e := mustGet(t, s2, fmt.Sprintf("id-%d", i))
		want := Completed
		if i%2 == 1 {
			want = InFlight
		}
		if e.State != want || e.Attempts != i || !e.NextAttempt.Equal(next) {
			t.Fatalf("id-%d after restart: %+v, want %v/%d/%v", i, e, want, i, next)
		}
	}
	if st := s2.Stats(); st.Entries != n {
		t.Fatalf("entries after restart = %d, want %d", st.Entries, n)
	}
	// Writes after the restart go on in the same slice (within its width).
	mustPut(t, s2, "after", Entry{State: Completed})
	if st := s2.Stats(); st.Slices != 1 || st.Entries != n+1 {
		t.Fatalf("after restart and one put: %+v, want 1 slice with %d entries", st, n+1)
	}
}

func TestTTLExpiry(t *testing.T) {
	clk := newFakeClock()
	const ttl = 8 * time.Hour // slice width 1h
	s := openT(t, filepath.Join(t.TempDir(), "d.db"), Options{Now: clk.Now, TTL: ttl})

	mustPut(t, s, "a", Entry{State: Completed})
	mustPut(t, s, "b", Entry{State: Completed})
	clk.Advance(5 * time.Hour)
	mustPut(t, s, "b", Entry{State: Completed, Attempts: 2}) // rewrite extends b's life
	if st := s.Stats(); st.Slices != 2 {
		t.Fatalf("slices = %d, want 2 (writes 5h apart, width 1h)", st.Slices)
	}

	clk.Advance(3*time.Hour - time.Nanosecond) // a is TTL-1ns old
	if e := mustGet(t, s, "a"); e.State != Completed {
		t.Fatalf("a just before TTL: %+v, want Completed", e)
	}
	clk.Advance(time.Nanosecond) // a is exactly TTL old
	if e := mustGet(t, s, "a"); e.State != Unknown {
		t.Fatalf("a at TTL: %+v, want Unknown", e)
	}
	if e := mustGet(t, s, "b"); e.State != Completed || e.Attempts != 2 {
		t.Fatalf("b (rewritten 3h ago): %+v, want Completed/2", e)
	}

	// The next commit drops the first slice: its newest record (b's first write) is TTL old.
	mustPut(t, s, "c", Entry{State: InFlight})
	st := s.Stats()
	if st.ExpiredSlices != 1 || st.Slices != 2 {
		t.Fatalf("after expiry commit: %+v, want 1 expired slice and 2 live (b's, c's)", st)
	}
	if e := mustGet(t, s, "b"); e.State != Completed {
		t.Fatalf("b after first slice dropped: %+v, want Completed from the newer slice", e)
	}

	clk.Advance(5 * time.Hour)
	if e := mustGet(t, s, "b"); e.State != Unknown {
		t.Fatalf("b 8h after its rewrite: %+v, want Unknown", e)
	}
	if e := mustGet(t, s, "c"); e.State != InFlight {
		t.Fatalf("c after 5h: %+v, want InFlight", e)
	}
}

// TestTTLHousekeeping checks that idle stores reclaim slices without any Put.
func TestTTLHousekeeping(t *testing.T) {
	clk := newFakeClock()
	s := openT(t, filepath.Join(t.TempDir(), "d.db"), Options{Now: clk.Now, TTL: 8 * time.Second})
	for i := range 3 {
		mustPut(t, s, fmt.Sprint("k", i), Entry{State: Completed})
		clk.Advance(2 * time.Second)
	}
	if st := s.Stats(); st.Slices != 3 || st.Entries != 3 {
		t.Fatalf("stats %+v, want 3 slices with 3 entries", st)
	}
	clk.Advance(time.Hour)
	waitFor(t, "idle slices to expire", func() bool { st := s.Stats(); return st.Slices == 0 && st.Entries == 0 })
	if st := s.Stats(); st.ExpiredSlices != 3 {
		t.Fatalf("expired slices = %d, want 3", st.ExpiredSlices)
	}
}

func TestTTLChangedAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.db")
	clk := newFakeClock()
	s := openT(t, path, Options{Now: clk.Now, TTL: 168 * time.Hour})
	mustPut(t, s, "old", Entry{State: Completed})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Hour)

	// Shorter TTL: "old" is forgotten at once and its slice is dropped at open.
	s = openT(t, path, Options{Now: clk.Now, TTL: time.Hour})
	if e := mustGet(t, s, "old"); e.State != Unknown {
		t.Fatalf("old with TTL 1h after 2h: %+v, want Unknown", e)
	}
	waitFor(t, "the expired slice to be dropped at open", func() bool { return s.Stats().Slices == 0 })
	mustPut(t, s, "new", Entry{State: Completed})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Longer TTL again: "new" lives on.
	clk.Advance(3 * time.Hour)
	s = openT(t, path, Options{Now: clk.Now, TTL: 168 * time.Hour})
	if e := mustGet(t, s, "new"); e.State != Completed {
		t.Fatalf("new with TTL 168h after 3h: %+v, want Completed", e)
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestMaxEntries(t *testing.T) {
	var logs syncBuffer
	const maxEntries = 800 // 100 per slice
	s := openT(t, filepath.Join(t.TempDir(), "d.db"), Options{
		TTL: 24 * time.Hour, MaxEntries: maxEntries, MaxBatch: 64,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	const n = 5000
	var wg sync.WaitGroup
	var maxSeen atomic.Int64
	for i := range n {
		wg.Add(1)
		s.Put(fmt.Sprintf("id-%05d", i), Entry{State: Completed}, func(err error) {
			if err != nil {
				t.Errorf("put %d: %v", i, err)
			}
			// done runs on the writer after the commit; Stats is already published.
			if e := s.Stats().Entries; e > maxSeen.Load() {
				maxSeen.Store(e)
			}
			wg.Done()
		})
	}
	wg.Wait()
	st := s.Stats()
	if maxSeen.Load() > maxEntries || st.Entries > maxEntries || st.Entries < maxEntries-100 {
		t.Fatalf("entries = %d (max seen %d), want within [%d, %d]", st.Entries, maxSeen.Load(), maxEntries-100, maxEntries)
	}
	if st.EvictedSlices == 0 || st.Slices > 9 {
		t.Fatalf("stats %+v: want evictions and at most 9 slices", st)
	}
	// The newest IDs are all remembered, the oldest forgotten.
	for i := n - (maxEntries - 100); i < n; i++ {
		if e := mustGet(t, s, fmt.Sprintf("id-%05d", i)); e.State != Completed {
			t.Fatalf("recent id-%05d: %+v, want Completed", i, e)
		}
	}
	if e := mustGet(t, s, "id-00000"); e.State != Unknown {
		t.Fatalf("oldest id: %+v, want Unknown (evicted)", e)
	}
	if c := strings.Count(logs.String(), "level=WARN msg=\"dedup store reached max_entries"); c != 1 {
		t.Fatalf("eviction warning logged %d times, want once at warn:\n%s", c, logs.String())
	}
}

func TestConcurrent(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "d.db"), Options{MaxBatch: 32})
	const workers, per = 32, 60
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				id := fmt.Sprintf("w%d-%d", w, i)
				if e, err := s.Get(id); err != nil || e.State != Unknown {
					t.Errorf("Get(%s) before put: %+v %v", id, e, err)
					return
				}
				if err := s.PutSync(id, Entry{State: InFlight, Attempts: 1}); err != nil {
					t.Errorf("PutSync(%s): %v", id, err)
					return
				}
				// Read-your-writes once done fired.
				if e, err := s.Get(id); err != nil || e.State != InFlight || e.Attempts != 1 {
					t.Errorf("Get(%s) after InFlight: %+v %v", id, e, err)
					return
				}
				done := make(chan error, 1)
				s.Put(id, Entry{State: Completed, Attempts: 1}, func(err error) { done <- err })
				// Concurrent readers see either the old or the new record, never anything else.
				if e, err := s.Get(id); err != nil || (e.State != InFlight && e.State != Completed) {
					t.Errorf("Get(%s) during commit: %+v %v", id, e, err)
					return
				}
				if err := <-done; err != nil {
					t.Errorf("Put(%s) Completed: %v", id, err)
					return
				}
				_ = s.Stats()
			}
		}()
	}
	wg.Wait()
	if st := s.Stats(); st.Entries != workers*per {
		t.Fatalf("entries = %d, want %d", st.Entries, workers*per)
	}
	for w := range workers {
		for i := range per {
			if e := mustGet(t, s, fmt.Sprintf("w%d-%d", w, i)); e.State != Completed {
				t.Fatalf("w%d-%d: %+v, want Completed", w, i, e)
			}
		}
	}
}

func TestDoneOrder(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "d.db"), Options{MaxBatch: 7})
	const n = 300
	var (
		mu    sync.Mutex
		order []int
		wg    sync.WaitGroup
	)
	for i := range n {
		wg.Add(1)
		// The same ID each time: the last Put must win.
		s.Put("same", Entry{State: InFlight, Attempts: i}, func(err error) {
			if err != nil {
				t.Errorf("put %d: %v", i, err)
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			wg.Done()
		})
	}
	wg.Wait()
	for i, v := range order {
		if v != i {
			t.Fatalf("done callbacks out of submission order at %d: got %d", i, v)
		}
	}
	if e := mustGet(t, s, "same"); e.Attempts != n-1 {
		t.Fatalf("last Put did not win: attempts %d, want %d", e.Attempts, n-1)
	}
	if st := s.Stats(); st.Entries != 1 {
		t.Fatalf("entries = %d, want 1", st.Entries)
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.db")
	s := openT(t, path, Options{})

	began := time.Now()
	s2, err := Open(path, Options{TTL: time.Hour, LockTimeout: 300 * time.Millisecond, Logger: quiet})
	took := time.Since(began)
	if err == nil {
		_ = s2.Close()
		t.Fatal("second Open on a locked file succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("err = %v, want ErrLocked", err)
	}
	want := "dedup: open " + path + ": file is locked by another process (is another mqsidecar running?)"
	if err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	if took > 2*time.Second {
		t.Fatalf("Open took %v with LockTimeout 300ms", took)
	}
	t.Logf("ErrLocked after %v", took)

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s3 := openT(t, path, Options{LockTimeout: 300 * time.Millisecond})
	_ = s3.Close()
}

func TestCorrupt(t *testing.T) {
	dir := t.TempDir()
	garbage := make([]byte, 16<<10)
	_, _ = rand.Read(garbage)

	boltFile := func(name string, fill func(tx *bolt.Tx) error) string {
		p := filepath.Join(dir, name)
		db, err := bolt.Open(p, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(fill); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rawFile := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ourMeta := func(tx *bolt.Tx, schema byte) error {
		m, err := tx.CreateBucket(metaBucket)
		if err != nil {
			return err
		}
		if err := m.Put(magicKey, magicValue); err != nil {
			return err
		}
		if err := m.Put(schemaKey, []byte{schema}); err != nil {
			return err
		}
		_, err = tx.CreateBucket(slicesBucket)
		return err
	}
	cases := map[string]string{
		"random bytes": rawFile("random.db", garbage),
		"short text":   rawFile("short.db", []byte("hello, not a database\n")),
		"foreign bbolt": boltFile("foreign.db", func(tx *bolt.Tx) error {
			b, err := tx.CreateBucket([]byte("users"))
			if err != nil {
				return err
			}
			return b.Put([]byte("k"), []byte("v"))
		}),
		"meta without magic": boltFile("nomagic.db", func(tx *bolt.Tx) error {
			_, err := tx.CreateBucket(metaBucket)
			if err != nil {
				return err
			}
			_, err = tx.CreateBucket(slicesBucket)
			return err
		}),
		"other schema": boltFile("schema2.db", func(tx *bolt.Tx) error { return ourMeta(tx, 2) }),
		"extra bucket": boltFile("extra.db", func(tx *bolt.Tx) error {
			if err := ourMeta(tx, schemaVersion); err != nil {
				return err
			}
			_, err := tx.CreateBucket([]byte("other"))
			return err
		}),
		"bad slice key": boltFile("badslice.db", func(tx *bolt.Tx) error {
			if err := ourMeta(tx, schemaVersion); err != nil {
				return err
			}
			return tx.Bucket(slicesBucket).Put([]byte("x"), []byte("y"))
		}),
	}
	for name, path := range cases {
		before, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s, err := Open(path, Options{TTL: time.Hour, Logger: quiet})
		if err == nil {
			_ = s.Close()
			t.Errorf("%s: Open succeeded", name)
			continue
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
		if !strings.HasPrefix(err.Error(), "dedup: open "+path+": file is corrupt or not an mqsidecar dedup store") {
			t.Errorf("%s: message %q does not name the path and the problem", name, err)
		}
		after, _ := os.ReadFile(path)
		if !bytes.Equal(before, after) {
			t.Errorf("%s: Open modified the file", name)
		}
		t.Logf("%s: %v", name, err)
	}

	// A bbolt file with no buckets at all (created and never written) is adopted.
	empty := boltFile("empty.db", func(*bolt.Tx) error { return nil })
	s := openT(t, empty, Options{})
	mustPut(t, s, "x", Entry{State: Completed})
}

func TestCorruptRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.db")
	s := openT(t, path, Options{})
	mustPut(t, s, "x", Entry{State: Completed})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(slicesBucket).ForEach(func(k, _ []byte) error {
			return tx.Bucket(slicesBucket).Bucket(k).Put([]byte("x"), []byte{99, 1})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	s = openT(t, path, Options{})
	if _, err := s.Get("x"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get of a damaged record: %v, want ErrCorrupt", err)
	}
	called := false
	errc := make(chan error, 2)
	s.Update("x", func(Entry) (Entry, bool) { called = true; return Entry{State: InFlight}, true }, func(_ Entry, err error) { errc <- err })
	s.Update("y", func(Entry) (Entry, bool) { return Entry{State: InFlight}, true }, func(_ Entry, err error) { errc <- err })
	if err := <-errc; !errors.Is(err, ErrCorrupt) || called {
		t.Fatalf("Update of a damaged record: %v (f called: %v), want ErrCorrupt before f", err, called)
	}
	if err := <-errc; err != nil {
		t.Fatalf("an update queued beside it failed too: %v", err)
	}
}

func TestCodec(t *testing.T) {
	for _, e := range []Entry{
		{State: InFlight, Updated: time.Unix(0, 1)},
		{State: Completed, Attempts: 1 << 40, NextAttempt: time.Unix(0, 1234567890123456789), Updated: time.Unix(0, 42)},
		{State: InFlight, Attempts: 7, Updated: time.Unix(0, -5)},
	} {
		v := appendEntry(nil, e, e.Updated.UnixNano())
		got, err := decodeEntry(v)
		if err != nil {
			t.Fatalf("decode %+v: %v", e, err)
		}
		if got.State != e.State || got.Attempts != e.Attempts || !got.NextAttempt.Equal(e.NextAttempt) ||
			got.NextAttempt.IsZero() != e.NextAttempt.IsZero() || !got.Updated.Equal(e.Updated) {
			t.Fatalf("round trip %+v -> %x -> %+v", e, v, got)
		}
		for cut := range len(v) {
			if _, err := decodeEntry(v[:cut]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("truncated record %x: err %v, want ErrCorrupt", v[:cut], err)
			}
		}
	}
	if _, err := decodeEntry([]byte{2, 1, 0, 0, 0}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("future record version: %v, want ErrCorrupt", err)
	}
}

func TestClosed(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "d.db"), Options{})
	mustPut(t, s, "a", Entry{State: Completed})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	var calls int
	var got error
	s.Put("b", Entry{State: Completed}, func(err error) { calls++; got = err })
	if calls != 1 || !errors.Is(got, ErrClosed) {
		t.Fatalf("Put after Close: %d calls, err %v; want 1 immediate call with ErrClosed", calls, got)
	}
	if err := s.PutSync("b", Entry{State: Completed}); !errors.Is(err, ErrClosed) {
		t.Fatalf("PutSync after Close: %v", err)
	}
	if _, err := s.Get("a"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	s.Put("c", Entry{State: Completed}, nil) // nil done is allowed
}

// TestCloseFlushes queues many Puts and closes at once: every done fires (with nil) before
// Close returns, and every record is on disk.
func TestCloseFlushes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.db")
	s := openT(t, path, Options{MaxBatch: 100})
	const n = 3000
	calls := make([]atomic.Int32, n)
	var failed atomic.Int32
	for i := range n {
		s.Put(fmt.Sprint("id-", i), Entry{State: Completed}, func(err error) {
			if err != nil {
				failed.Add(1)
			}
			calls[i].Add(1)
		})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range calls {
		if c := calls[i].Load(); c != 1 {
			t.Fatalf("done of put %d called %d times before Close returned, want 1", i, c)
		}
	}
	if failed.Load() != 0 {
		t.Fatalf("%d puts failed", failed.Load())
	}
	s = openT(t, path, Options{})
	for i := range n {
		if e := mustGet(t, s, fmt.Sprint("id-", i)); e.State != Completed {
			t.Fatalf("id-%d after Close and reopen: %+v", i, e)
		}
	}
}

// TestCloseRace closes while producers are putting: every done is called exactly once, and
// every Put whose done got nil is on disk.
func TestCloseRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.db")
	s := openT(t, path, Options{MaxBatch: 16})
	const producers = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		ok      []string
		puts    atomic.Int64
		dones   atomic.Int64
		started atomic.Int64
	)
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("p%d-%d", p, i)
				var once atomic.Int32
				closed := make(chan struct{})
				puts.Add(1)
				started.Add(1)
				s.Put(id, Entry{State: Completed}, func(err error) {
					if once.Add(1) != 1 {
						t.Errorf("done for %s called twice", id)
					}
					dones.Add(1)
					if err == nil {
						mu.Lock()
						ok = append(ok, id)
						mu.Unlock()
					} else if errors.Is(err, ErrClosed) {
						close(closed)
					} else {
						t.Errorf("put %s: %v", id, err)
					}
				})
				select {
				case <-closed:
					return
				default:
				}
			}
		}()
	}
	waitFor(t, "producers to get going", func() bool { return started.Load() > 2000 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if puts.Load() != dones.Load() {
		t.Fatalf("%d puts, %d done calls", puts.Load(), dones.Load())
	}
	s = openT(t, path, Options{})
	for _, id := range ok {
		if e := mustGet(t, s, id); e.State != Completed {
			t.Fatalf("%s was acknowledged but is %+v after reopen", id, e)
		}
	}
	t.Logf("%d puts, %d committed before close", puts.Load(), len(ok))
}

// TestStatsAfterCrash: when the newest slice's stats may lag (no Close), Open keeps that
// slice until its nominal end + TTL instead of trusting a possibly stale last-write time.
func TestStatsAfterCrash(t *testing.T) {
	for _, clean := range []bool{true, false} {
		t.Run(fmt.Sprint("clean=", clean), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "d.db")
			clk := newFakeClock()
			const ttl = 8 * time.Hour // width 1h
			s := openT(t, path, Options{Now: clk.Now, TTL: ttl})
			mustPut(t, s, "a", Entry{State: Completed})
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if !clean { // what a kill -9 between stats writes leaves behind
				db, err := bolt.Open(path, 0o600, nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := db.Update(func(tx *bolt.Tx) error {
					return tx.Bucket(metaBucket).Put(statsTxKey, []byte{0, 0, 0, 0, 0, 0, 0, 1})
				}); err != nil {
					t.Fatal(err)
				}
				_ = db.Close()
			}
			clk.Advance(ttl + 30*time.Minute)
			s = openT(t, path, Options{Now: clk.Now, TTL: ttl})
			if e := mustGet(t, s, "a"); e.State != Unknown {
				t.Fatalf("a after TTL: %+v", e)
			}
			if clean {
				waitFor(t, "the slice to expire at open", func() bool { return s.Stats().Slices == 0 })
				return
			}
			mustPut(t, s, "b", Entry{State: Completed}) // a commit: expiry runs
			if st := s.Stats(); st.Slices != 2 || st.ExpiredSlices != 0 {
				t.Fatalf("unclean: %+v, want a's slice kept until its end + TTL", st)
			}
			clk.Advance(30 * time.Minute) // a's slice: end + TTL reached
			mustPut(t, s, "c", Entry{State: Completed})
			if st := s.Stats(); st.Slices != 1 || st.ExpiredSlices != 1 {
				t.Fatalf("unclean after end+TTL: %+v, want a's slice dropped", st)
			}
		})
	}
}
