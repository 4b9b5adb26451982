package ackgate

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// byteApp holds every push until released and records, for each push, the IDs in flight
// beside it and the bytes in flight at its start.
type byteApp struct {
	mu        sync.Mutex
	inflight  map[string]int // ID → body size
	bytes     int
	peakBytes int
	beside    map[string][]string
	release   chan struct{}
	once      sync.Once
}

func newByteApp(t *testing.T) (*byteApp, string) {
	a := &byteApp{inflight: map[string]int{}, beside: map[string][]string{}, release: make(chan struct{})}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	t.Cleanup(a.unblock) // before srv.Close: a failure must not leave handlers blocked
	return a, srv.URL
}

func (a *byteApp) unblock() { a.once.Do(func() { close(a.release) }) }

func (a *byteApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body bytes.Buffer
	_, _ = body.ReadFrom(r.Body)
	id := r.Header.Get("ce-id")
	a.mu.Lock()
	for other := range a.inflight {
		a.beside[id] = append(a.beside[id], other)
	}
	a.inflight[id] = body.Len()
	a.bytes += body.Len()
	a.peakBytes = max(a.peakBytes, a.bytes)
	a.mu.Unlock()
	<-a.release
	a.mu.Lock()
	delete(a.inflight, id)
	a.bytes -= body.Len()
	a.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (a *byteApp) pushing() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.inflight)
}

func sized(id string, n int) *adapters.Delivery {
	return &adapters.Delivery{ID: id, Payload: bytes.Repeat([]byte{'x'}, n), Source: "fake://t"}
}

// The byte budget bounds admission: with 3 000-byte messages and a 10 000-byte budget at
// most 3 are admitted (the 4th is read and waits), however many max_inflight allows.
func TestByteBudgetBoundsAdmission(t *testing.T) {
	a, url := newByteApp(t)
	src := newFakeSource()
	o := opts(url)
	o.Ordering, o.MaxInflight, o.MaxBytes = OrderNone, 16, 10000
	g, _ := start(t, src, nil, o)
	for i := range 40 {
		src.sendWith(sized(fmt.Sprintf("m%02d", i), 3000-3))
	}
	waitFor(t, "3 pushes in flight", func() bool { return a.pushing() == 3 })
	time.Sleep(100 * time.Millisecond) // give an unbounded gate the chance to admit more
	if n := a.pushing(); n != 3 {
		t.Fatalf("%d pushes of 3 000 bytes in flight with a 10 000-byte budget", n)
	}
	if n := src.reads.Load(); n != 4 {
		t.Fatalf("read %d deliveries, want 4: 3 admitted and one waiting for the budget", n)
	}
	g.laneMu.Lock()
	admitted := g.admittedBytes
	g.laneMu.Unlock()
	if admitted != 9000 {
		t.Fatalf("admitted bytes %d, want 9000", admitted)
	}
	a.unblock()
	waitFor(t, "all settled", func() bool { return src.settledCount() == 40 })
	for i := range 40 {
		if errs := src.results(fmt.Sprintf("m%02d", i)); len(errs) != 1 || errs[0] != nil {
			t.Fatalf("m%02d settled %v, want one nil", i, errs)
		}
	}
	if a.peakBytes > 3*(3000-3) {
		t.Fatalf("app saw %d payload bytes at once, budget 10 000", a.peakBytes)
	}
	g.laneMu.Lock()
	defer g.laneMu.Unlock()
	if g.admittedBytes != 0 {
		t.Fatalf("admitted bytes %d after every delivery settled, want 0", g.admittedBytes)
	}
}

// A message larger than the whole budget is delivered, alone: it waits for what is
// admitted before it, nothing is admitted beside it, and what follows waits for it.
func TestOversizedMessageIsDeliveredAlone(t *testing.T) {
	a, url := newByteApp(t)
	src := newFakeSource()
	o := opts(url)
	o.Ordering, o.MaxInflight, o.MaxBytes = OrderNone, 16, 1000
	start(t, src, nil, o)
	src.sendWith(sized("small-1", 100))
	src.sendWith(sized("big", 5000))
	src.sendWith(sized("small-2", 100))
	waitFor(t, "small-1 pushed", func() bool { return a.pushing() == 1 })
	time.Sleep(50 * time.Millisecond)
	if n := a.pushing(); n != 1 {
		t.Fatalf("%d pushes in flight, want small-1 alone while the oversized one waits", n)
	}
	a.unblock()
	waitFor(t, "all settled", func() bool { return src.settledCount() == 3 })
	for _, id := range []string{"small-1", "big", "small-2"} {
		if errs := src.results(id); len(errs) != 1 || errs[0] != nil {
			t.Fatalf("%s settled %v, want one nil", id, errs)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if b := a.beside["big"]; len(b) != 0 {
		t.Fatalf("the oversized message was pushed beside %v", b)
	}
	if b := a.beside["small-2"]; len(b) != 0 {
		t.Fatalf("small-2 was pushed beside %v", b)
	}
}

// One lane parked on a failing message holds at most half the byte budget: the other
// lane's messages still get through, though the look-ahead count alone would let the
// failing lane take the whole budget.
func TestFailingLaneCannotTakeTheWholeByteBudget(t *testing.T) {
	a, url := newApp(t, func(id string, attempt int, w http.ResponseWriter) bool {
		if id == "p0-000" { // fails until the end of the test
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return false
	})
	src := &limitedSource{fakeSource: newFakeSource(), wake: make(chan struct{}, 1), maxSeen: map[string]int{}, inflight: map[string]int{}}
	o := opts(url)
	// Look-ahead 8 × 1 000 bytes would fill the 8 000-byte budget with lane p0 alone.
	o.MaxInflight, o.LaneLookahead, o.MaxBytes = 16, 8, 8000
	start(t, src, openStore(t), o)
	pad := strings.Repeat("x", 1000-6)
	for i := range 20 {
		src.sendWith(&adapters.Delivery{ID: fmt.Sprintf("p0-%03d", i), Payload: []byte(pad), Source: "fake://t", Lane: "p0"})
	}
	time.Sleep(50 * time.Millisecond) // p0 takes what it may first
	for i := range 20 {
		src.sendWith(&adapters.Delivery{ID: fmt.Sprintf("p1-%03d", i), Payload: []byte(pad), Source: "fake://t", Lane: "p1"})
	}
	waitFor(t, "lane p1 delivered", func() bool { return a.count("p1-019") == 1 })
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.maxSeen["p0"] > 4 {
		t.Fatalf("failing lane held %d messages of 1 000 bytes, at most half the 8 000-byte budget allowed", src.maxSeen["p0"])
	}
}

// A delivery fenced while it waits for the byte budget is settled not-done at once (its
// partition's revoke does not wait for the budget), and reading goes on.
func TestFencedWhileWaitingForTheBudget(t *testing.T) {
	a, url := newByteApp(t)
	src := newFakeSource()
	o := opts(url)
	o.Ordering, o.MaxInflight, o.MaxBytes = OrderNone, 16, 1000
	start(t, src, nil, o)
	src.sendWith(sized("first", 900))
	waitFor(t, "first pushed", func() bool { return a.pushing() == 1 })
	fence := make(chan struct{})
	d := sized("fenced", 900)
	d.Fenced = fence
	src.sendWith(d)
	waitFor(t, "the second read", func() bool { return src.reads.Load() == 2 })
	close(fence)
	waitFor(t, "the fenced delivery settled", func() bool { return len(src.results("fenced")) == 1 })
	if errs := src.results("fenced"); !errors.Is(errs[0], adapters.ErrNotDone) {
		t.Fatalf("fenced delivery settled with %v, want ErrNotDone", errs[0])
	}
	if len(src.results("first")) != 0 {
		t.Fatal("first settled before the app answered")
	}
	src.sendWith(sized("third", 50))
	waitFor(t, "the third read", func() bool { return src.reads.Load() == 3 })
	a.unblock()
	waitFor(t, "first and third settled", func() bool { return src.settledCount() == 3 })
}
