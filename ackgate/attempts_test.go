package ackgate

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/dedup"
)

// The persisted Attempts counts pushes started. A restart while a message waits for its
// next attempt (twice here: once during the backoff after a failed push, once while the
// redelivery waits for the persisted time) must neither consume an attempt nor skip a
// ce-deliveryattempt number: the app sees 1, 2, 3 and exactly max_attempts pushes.
func TestAttemptsAcrossRestartsDuringBackoff(t *testing.T) {
	a, url := newApp(t, func(_ string, _ int, w http.ResponseWriter) bool {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	st := openStore(t)
	o := opts(url)
	o.MaxAttempts, o.DeadLetter = 3, true
	// Every wait is exactly 1s: Retry-After 1, and no backoff beyond it.
	o.Backoff = Backoff{Initial: time.Second, Max: time.Second, Multiplier: 2}
	redelivery := func(src *fakeSource) {
		src.sendWith(&adapters.Delivery{ID: "m", Payload: []byte("m"), Source: "fake://t", Lane: "p0", Redelivered: true})
	}

	// Run 1: the first push fails; stopped during the backoff.
	src := newFakeSource()
	_, stop := start(t, src, st, o)
	src.send("m", "p0", "")
	waitFor(t, "retry scheduled", func() bool { e, _ := st.Get("m"); return !e.NextAttempt.IsZero() })
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Run 2: the redelivery waits for the persisted next attempt; stopped while it waits.
	src = newFakeSource()
	g, stop := start(t, src, st, o)
	redelivery(src)
	waitFor(t, "parked", func() bool { g.laneMu.Lock(); defer g.laneMu.Unlock(); return len(g.parkedSince) == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := a.count("m"); n != 1 {
		t.Fatalf("pushed %d times before the scheduled time, want 1", n)
	}

	// Run 3: runs to the end.
	src = newFakeSource()
	start(t, src, st, o)
	redelivery(src)
	waitFor(t, "settled", func() bool { return src.settledCount() == 1 })
	hs := a.headers("m")
	var got []string
	for _, h := range hs {
		got = append(got, h.Get("ce-deliveryattempt"))
	}
	if len(hs) != o.MaxAttempts {
		t.Fatalf("%d pushes (ce-deliveryattempt %v), want max_attempts = %d", len(hs), got, o.MaxAttempts)
	}
	for i, v := range got {
		if v != strconv.Itoa(i+1) {
			t.Fatalf("ce-deliveryattempt %v, want 1, 2, 3", got)
		}
	}
	src.mu.Lock()
	dls := append([]adapters.Failure(nil), src.dls...)
	src.mu.Unlock()
	if len(dls) != 1 || dls[0].Reason != "max_attempts" || dls[0].Attempts != 3 {
		t.Fatalf("dead letters %+v", dls)
	}
	waitFor(t, "completed", func() bool { e, _ := st.Get("m"); return e.State == dedup.Completed && e.Attempts == 3 })
}

// The record says what happened while the message waits: after a failed first push, one
// push started and the next one scheduled.
func TestRetryRecordCountsPushesStarted(t *testing.T) {
	_, url := newApp(t, func(_ string, _ int, w http.ResponseWriter) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	st := openStore(t)
	o := opts(url)
	o.Backoff = Backoff{Initial: time.Hour, Max: time.Hour, Multiplier: 2}
	src := newFakeSource()
	_, stop := start(t, src, st, o)
	src.send("m", "p0", "")
	waitFor(t, "retry scheduled", func() bool { e, _ := st.Get("m"); return !e.NextAttempt.IsZero() })
	if e, _ := st.Get("m"); e.State != dedup.InFlight || e.Attempts != 1 {
		t.Fatalf("record %v with %d attempts after one push, want in flight with 1", e.State, e.Attempts)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if e, _ := st.Get("m"); e.State != dedup.InFlight || e.Attempts != 1 || e.NextAttempt.IsZero() {
		t.Fatalf("after the stop: %v, %d attempts, next %v; want in flight, 1, the schedule kept", e.State, e.Attempts, e.NextAttempt)
	}
}
