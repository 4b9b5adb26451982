package ackgate

import (
	"net/http"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
)

// Retry-After is capped at backoff.max on the live path, as it is after a restart: an app
// answering Retry-After: 86400 must not park its lane for a day, nor persist a next attempt
// a day away.
func TestRetryAfterIsCappedAtBackoffMax(t *testing.T) {
	var first time.Time
	var gap time.Duration
	a, url := newApp(t, func(_ string, attempt int, w http.ResponseWriter) bool {
		if attempt == 1 {
			first = time.Now()
			w.Header().Set("Retry-After", "86400")
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		gap = time.Since(first)
		return false
	})
	st := openStore(t)
	src := newFakeSource()
	o := opts(url)
	o.Backoff = Backoff{Initial: time.Millisecond, Max: 300 * time.Millisecond, Multiplier: 2}
	start(t, src, st, o)
	src.send("slow-down", "p0", "")
	waitFor(t, "retry scheduled", func() bool { e, _ := st.Get("slow-down"); return !e.NextAttempt.IsZero() || a.count("slow-down") > 1 })
	if e, _ := st.Get("slow-down"); !e.NextAttempt.IsZero() && time.Until(e.NextAttempt) > o.Backoff.Max {
		t.Fatalf("next attempt persisted %v ahead, backoff.max is %v", time.Until(e.NextAttempt).Round(time.Second), o.Backoff.Max)
	}
	deadline := time.Now().Add(3 * time.Second)
	for src.settledCount() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("not retried within 3s: Retry-After 86400 was not capped at backoff.max (300ms)")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r := src.results("slow-down"); len(r) != 1 || r[0] != nil {
		t.Fatalf("settled %v", r)
	}
	if gap < 250*time.Millisecond {
		t.Fatalf("retried after %v: the capped Retry-After (300ms) was not honoured", gap)
	}
	if e, _ := st.Get("slow-down"); e.State != dedup.Completed {
		t.Fatalf("record %v", e.State)
	}
}
