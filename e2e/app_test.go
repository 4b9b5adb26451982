package e2e

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// push is one HTTP push the recording app received.
type push struct {
	Seq         int // arrival order, from 0
	ID          string
	Key         string // ce-partitionkey
	Partition   string // ce-partition
	Offset      string // ce-offset
	Attempt     int    // ce-deliveryattempt
	Redelivered bool   // ce-redelivered: true
	Status      int    // what the app answered; 0 = connection closed without an answer
	At          time.Time
	// From names the pusher: the app URL's "from" query parameter (a fleet replica) and the
	// connection's remote address, for reports on duplicates.
	From string
	// ConnAt is when the push's connection was accepted, Done when the app finished the
	// push: with the kill times they tell a push its killed sender had on the wire.
	ConnAt, Done time.Time
	// Orphan: the sidecar that sent this push was killed (kill -9) before the app finished
	// it (set by the fleet runner, see markOrphans).
	Orphan bool
}

// appMode is what the app does with a push.
type appMode int

const (
	appUp      appMode = iota
	appDown503         // answers 503 to everything
	appRefuse          // listener closed: connections are refused
)

func (m appMode) String() string {
	switch m {
	case appUp:
		return "up"
	case appDown503:
		return "answering 503"
	case appRefuse:
		return "refusing connections"
	}
	return fmt.Sprintf("appMode(%d)", int(m))
}

// recApp is the app under the sidecar: it records every push and answers per its mode. It
// fails a deterministic share of first attempts (the first push of an ID it sees): the
// decision depends on the ID only, so a rerun fails the same IDs.
type recApp struct {
	t        testing.TB
	addr     string
	failPerK int           // first attempts failed, per thousand IDs
	delay    time.Duration // work per push, to make kills land mid-stream

	mu         sync.Mutex
	srv        *http.Server
	mode       appMode
	pushes     []push
	seen       map[string]int // pushes per ID
	ok         map[string]int // 2xx answers per ID
	delivered  int            // IDs with at least one 2xx
	inflight   map[string]int
	concurrent []string                 // IDs pushed while a push of the same ID was being answered
	connAt     map[string]time.Time     // remote address → when its current connection was accepted
	hold       map[string]chan struct{} // first push of these IDs waits until the channel is closed
	abort      map[string]bool          // first push of these IDs is read, then the connection closed unanswered
	reached    []threshold              // closed when delivered reaches n
}

type threshold struct {
	n  int
	ch chan struct{}
}

// newRecApp starts the app on 127.0.0.1 (a free port, kept across down/up).
func newRecApp(t testing.TB, failPerK int, delay time.Duration) *recApp {
	t.Helper()
	a := &recApp{
		t: t, failPerK: failPerK, delay: delay,
		seen: map[string]int{}, ok: map[string]int{}, inflight: map[string]int{}, connAt: map[string]time.Time{}, hold: map[string]chan struct{}{}, abort: map[string]bool{},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.addr = ln.Addr().String()
	a.serve(ln)
	t.Cleanup(func() {
		a.mu.Lock()
		srv := a.srv
		for _, ch := range a.hold {
			close(ch)
		}
		a.hold = map[string]chan struct{}{}
		a.mu.Unlock()
		if srv != nil {
			srv.Close()
		}
	})
	return a
}

// url is where the sidecar pushes.
func (a *recApp) url() string { return "http://" + a.addr + "/push" }

// serve starts an HTTP server on ln. Caller holds no lock.
func (a *recApp) serve(ln net.Listener) {
	srv := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second, ConnState: func(c net.Conn, st http.ConnState) {
		if st == http.StateNew {
			a.mu.Lock()
			a.connAt[c.RemoteAddr().String()] = time.Now()
			a.mu.Unlock()
		}
	}}
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.t.Errorf("app server: %v", err)
		}
	}()
}

// failsFirst reports whether the app fails the first push of id, and with which status.
func (a *recApp) failsFirst(id string) (int, bool) {
	if a.failPerK <= 0 {
		return 0, false
	}
	h := fnv.New32a()
	io.WriteString(h, id)
	v := h.Sum32()
	if int(v%1000) >= a.failPerK {
		return 0, false
	}
	if v&(1<<16) != 0 {
		return http.StatusServiceUnavailable, true
	}
	return http.StatusInternalServerError, true
}

// ServeHTTP records the push and answers.
func (a *recApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	id := r.Header.Get("ce-id")
	attempt, _ := strconv.Atoi(r.Header.Get("ce-deliveryattempt"))
	p := push{
		ID: id, Key: r.Header.Get("ce-partitionkey"),
		Partition: r.Header.Get("ce-partition"), Offset: r.Header.Get("ce-offset"),
		Attempt: attempt, Redelivered: r.Header.Get("ce-redelivered") == "true",
		At: time.Now(), From: r.URL.Query().Get("from") + "@" + r.RemoteAddr,
	}
	a.mu.Lock()
	p.ConnAt = a.connAt[r.RemoteAddr]
	p.Seq = len(a.pushes)
	a.pushes = append(a.pushes, p)
	if a.inflight[id] > 0 {
		a.concurrent = append(a.concurrent, id)
	}
	a.inflight[id]++
	first := a.seen[id] == 0
	a.seen[id]++
	var hold chan struct{}
	abort := false
	if first {
		hold = a.hold[id]
		abort = a.abort[id]
	}
	mode := a.mode
	a.mu.Unlock()

	status := http.StatusOK
	if st, fail := a.failsFirst(id); first && fail {
		status = st
	}
	if mode == appDown503 {
		status = http.StatusServiceUnavailable
	}
	if abort {
		status = 0 // an app that crashed or was cut off after reading the request
	}
	status = holdAnswer(r.Context(), hold, a.delay, status)

	a.mu.Lock()
	if a.mode != appUp && status >= 200 && status < 300 {
		// Went down while this push was being handled: it does not count as answered.
		status = 0
	}
	a.pushes[p.Seq].Status = status
	a.pushes[p.Seq].Done = time.Now()
	a.inflight[id]--
	if status >= 200 && status < 300 {
		if a.ok[id] == 0 {
			a.delivered++
			kept := a.reached[:0]
			for _, th := range a.reached {
				if a.delivered >= th.n {
					close(th.ch)
				} else {
					kept = append(kept, th)
				}
			}
			a.reached = kept
		}
		a.ok[id]++
	}
	a.mu.Unlock()
	if status == 0 {
		panic(http.ErrAbortHandler) // close the connection without an answer
	}
	w.WriteHeader(status)
}

// setMode switches the app down (503 or refusing connections) or back up. Switching to
// appRefuse closes the listener and every open connection; switching back listens on the
// same address again.
func (a *recApp) setMode(m appMode) {
	a.t.Helper()
	a.mu.Lock()
	prev := a.mode
	a.mode = m
	srv := a.srv
	if m == appRefuse {
		a.srv = nil
	}
	a.mu.Unlock()
	switch {
	case m == appRefuse && prev != appRefuse:
		srv.Close()
	case m != appRefuse && prev == appRefuse:
		var ln net.Listener
		var err error
		// The port was ours a moment ago; retry briefly in case the kernel holds it.
		for i := 0; i < 50; i++ {
			if ln, err = net.Listen("tcp", a.addr); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			a.t.Fatalf("app: listen again on %s: %v", a.addr, err)
		}
		a.serve(ln)
	}
}

// holdFirst makes the first push of each id wait until release is called.
func (a *recApp) holdFirst(ids ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		a.hold[id] = make(chan struct{})
	}
}

// abortFirst makes the app read the first push of each id and then close the connection
// without answering, as an app that crashes mid-request (or a proxy that cuts it off) does.
func (a *recApp) abortFirst(ids ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		a.abort[id] = true
	}
}

// release lets held pushes answer.
func (a *recApp) release(ids ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		if ch, ok := a.hold[id]; ok {
			close(ch)
			delete(a.hold, id)
		}
	}
}

// appStats is a consistent snapshot of counters.
type appStats struct {
	Pushes    int
	Delivered int // IDs with at least one 2xx
	Inflight  int // pushes being answered right now
}

func (s appStats) String() string {
	return fmt.Sprintf("pushes=%d delivered=%d inflight=%d", s.Pushes, s.Delivered, s.Inflight)
}

func (a *recApp) stats() appStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := appStats{Pushes: len(a.pushes), Delivered: a.delivered}
	for _, n := range a.inflight {
		s.Inflight += n
	}
	return s
}

// inflightOf reports how many pushes of id are being answered right now.
func (a *recApp) inflightOf(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inflight[id]
}

// okSet returns the IDs answered 2xx so far.
func (a *recApp) okSet() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := make(map[string]bool, len(a.ok))
	for id := range a.ok {
		m[id] = true
	}
	return m
}

// snapshot returns a copy of every push so far and the concurrent-push IDs.
func (a *recApp) snapshot() ([]push, []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]push(nil), a.pushes...), append([]string(nil), a.concurrent...)
}

// deliveredReached returns a channel closed as soon as n IDs were answered 2xx (at once if
// that happened already): a precise trigger for killing the sidecar mid-stream.
func (a *recApp) deliveredReached(n int) <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch := make(chan struct{})
	if a.delivered >= n {
		close(ch)
	} else {
		a.reached = append(a.reached, threshold{n, ch})
	}
	return ch
}

// waitDelivered waits until at least n IDs were answered 2xx.
func (a *recApp) waitDelivered(t testing.TB, n int, timeout time.Duration, extra ...func() string) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d IDs delivered", n), func() (bool, string) {
		s := a.stats()
		return s.Delivered >= n, s.String()
	}, extra...)
}

// holdAnswer waits until hold is closed (when not nil), then for delay (unless the answer
// is already 0), and returns status, or 0 when the sidecar gave up on the push meanwhile
// (the request's context ended: no answer reached it).
func holdAnswer(ctx context.Context, hold <-chan struct{}, delay time.Duration, status int) int {
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return 0
		}
	}
	if delay > 0 && status != 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return 0
		}
	}
	return status
}

// quiet returns the counters and when the app last received a push (zero before the first).
func (a *recApp) quiet() (appStats, time.Time) {
	s := a.stats()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.pushes) == 0 {
		return s, time.Time{}
	}
	return s, a.pushes[len(a.pushes)-1].At
}
