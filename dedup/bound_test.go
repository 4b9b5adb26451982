package dedup

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
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
