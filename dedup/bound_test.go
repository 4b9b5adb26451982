package dedup

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRateVerdict(t *testing.T) {
	day := 24 * time.Hour
	for _, c := range []struct {
		rate, warned float64
		max          int
		want         verdict
	}{
		{rate: 10, max: 0, want: verdictQuiet},         // unbounded: nothing to fit
		{rate: 10, max: 1_000_000, want: verdictQuiet}, // 864,000 fit
		{rate: 12, max: 1_000_000, want: verdictWarn},  // 1,036,800 do not
		{rate: 13, warned: 12, max: 1_000_000, want: verdictQuiet},
		{rate: 24, warned: 12, max: 1_000_000, want: verdictWarn},  // doubled
		{rate: 6, warned: 24, max: 1_000_000, want: verdictFits},   // 518,400: fits with room
		{rate: 11, warned: 12, max: 1_000_000, want: verdictQuiet}, // fits, but not with a fifth to spare
		{rate: 0, warned: 0, max: 1_000_000, want: verdictQuiet},
	} {
		if got := rateVerdict(c.rate, c.warned, day, c.max); got != c.want {
			t.Errorf("rateVerdict(rate %v, warned %v, ttl 1d, max %d) = %v, want %v", c.rate, c.warned, c.max, got, c.want)
		}
	}
}

// TestStartWarnsWhenHistoryDoesNotFit: a store whose IDs on disk show a rate that ttl ×
// rate exceeds max_entries says so at Open, with the numbers; one that fits says nothing.
func TestStartWarnsWhenHistoryDoesNotFit(t *testing.T) {
	for _, c := range []struct {
		max  int
		warn bool
	}{{max: 100, warn: true}, {max: 100_000, warn: false}} {
		t.Run(fmt.Sprint("max=", c.max), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "d.db")
			var nanos atomic.Int64
			nanos.Store(time.Unix(1_700_000_000, 0).UnixNano())
			clock := func() time.Time { return time.Unix(0, nanos.Load()) }
			s := openT(t, path, Options{TTL: time.Hour, Now: clock})
			// 120 IDs over 10 minutes: 0.2/s, 720 per hour of ttl.
			for i := range 120 {
				nanos.Add(int64(5 * time.Second))
				if err := s.PutSync(fmt.Sprint("id-", i), Entry{State: Completed, Attempts: 1}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			var logs syncBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			s = openT(t, path, Options{TTL: time.Hour, MaxEntries: c.max, Now: clock, Logger: log})
			_ = s.Close()
			warned := strings.Contains(logs.String(), "does not fit in max_entries")
			if warned != c.warn {
				t.Fatalf("warned = %v, want %v; log:\n%s", warned, c.warn, logs.String())
			}
			if c.warn && !strings.Contains(logs.String(), "ids_needed=") {
				t.Fatalf("the warning does not give the numbers:\n%s", logs.String())
			}
		})
	}
}

// TestRateWarningWhileRunning: the writer measures the rate of new IDs every rateEvery and
// warns when ttl × rate does not fit in max_entries, again only when the rate doubles (not
// when it stays), and says so when it fits again.
func TestRateWarningWhileRunning(t *testing.T) {
	old := rateEvery
	t.Cleanup(func() { rateEvery = old }) // after the store's Close (cleanups run last-in first-out)
	rateEvery = time.Second
	clk := newFakeClock()
	var logs syncBuffer
	s := openT(t, filepath.Join(t.TempDir(), "d.db"), Options{
		TTL: 8 * time.Second, MaxEntries: 50, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	time.Sleep(300 * time.Millisecond) // the first tick starts the measurement
	next := 0
	phase := func(ids int) {
		var wg sync.WaitGroup
		for range ids {
			wg.Add(1)
			s.Put(fmt.Sprint("id-", next), Entry{State: Completed, Attempts: 1}, func(error) { wg.Done() })
			next++
		}
		wg.Wait()
		clk.Advance(time.Second)
		time.Sleep(400 * time.Millisecond) // a few ticks (every 125 ms with this ttl)
	}
	count := func(s string) int { return strings.Count(logs.String(), s) }
	const warn, fits = "does not fit in max_entries", "fits in max_entries again"

	phase(100) // 100/s × 8 s = 800 > 50
	if count(warn) != 1 {
		t.Fatalf("after 100 IDs/s: %d warnings, want 1:\n%s", count(warn), logs.String())
	}
	phase(120) // not materially different: no new warning
	if count(warn) != 1 {
		t.Fatalf("after 120 IDs/s: %d warnings, want still 1:\n%s", count(warn), logs.String())
	}
	phase(400) // more than doubled
	if count(warn) != 2 || !strings.Contains(logs.String(), "ids_per_second=400") {
		t.Fatalf("after 400 IDs/s: %d warnings, want 2 (one at 400/s):\n%s", count(warn), logs.String())
	}
	phase(0) // nothing new: fits
	if count(fits) != 1 {
		t.Fatalf("after 0 IDs/s: %d 'fits again' lines, want 1:\n%s", count(fits), logs.String())
	}
}
