package dedup

import (
	"fmt"
	"log/slog"
	"time"
)

// DefaultMaxEntries is the default bound of the store (config dedup.max_entries): 4 million
// IDs. Measured with this store (200,000 IDs bounded, the high-water mark of bbolt's pages,
// which includes the extra slice kept beyond the bound and the free pages): about 100 bytes
// per ID for 32-character random IDs, 107 for UUIDs, 164 for the longest keys (IDs over 128
// bytes, stored as "sha256:" and 64 hex digits). So 4 million IDs take at most about 660 MB,
// plus bbolt's 16 MiB growth step: a third of the chart's default 1 GiB volume stays free.
// At 100 new IDs per second that is about 11 hours of history; the default dedup.ttl (7
// days) is kept up to about 6.6 new IDs per second. The store warns when ttl × the rate of
// new IDs does not fit (see watchRate).
const DefaultMaxEntries = 4_000_000

// Ready reports nil while the store can write. While commits are paused because the file
// system is full (see the package doc, "Full disk"), it returns an error wrapping
// ErrDiskFull that says since when and how many records wait; the sidecar's /readyz
// reports it.
func (s *Store) Ready() error {
	p := s.paused.Load()
	if p == nil {
		return nil
	}
	return fmt.Errorf("%w: %s: commits paused for %s with %d records waiting; nothing more is admitted or acknowledged until space is freed (it resumes by itself): %v",
		ErrDiskFull, s.path, time.Since(p.since).Round(time.Second), p.waiting, p.err)
}

// rateEvery is how often the writer measures the rate of new IDs against the bound.
var rateEvery = time.Minute

// rateWatch is the writer's measurement of the rate of new IDs (see watchRate).
type rateWatch struct {
	at     time.Time // start of the current window
	added  int64     // Store.added at that time
	warned float64   // the rate (IDs/s) last warned about; 0 = not warned
}

// watchRate measures, once per rateEvery, the rate of IDs newly recorded and says when ttl
// × that rate does not fit in MaxEntries (see judgeRate). Writer only.
func (s *Store) watchRate(now time.Time) {
	w := &s.rate
	if w.at.IsZero() || now.Before(w.at) {
		w.at, w.added = now, s.added
		return
	}
	el := now.Sub(w.at)
	if el < rateEvery {
		return
	}
	rate := float64(s.added-w.added) / el.Seconds()
	w.at, w.added = now, s.added
	s.judgeRate(rate, el, "observed")
}

// judgeRate logs a warning when ttl × rate (new IDs per second) exceeds MaxEntries, and
// again only when the rate has since doubled or halved while still not fitting; once it
// fits again with a fifth to spare, it says so at info level. basis says where the rate
// comes from. Writer only (and Open before the writer starts).
func (s *Store) judgeRate(rate float64, over time.Duration, basis string) {
	max := s.opts.MaxEntries
	switch rateVerdict(rate, s.rate.warned, s.ttl, max) {
	case verdictWarn:
		s.rate.warned = rate
		s.log.Warn("dedup: ttl × the rate of new IDs does not fit in max_entries: IDs are forgotten before their ttl; raise dedup.max_entries (with the volume: about 170 bytes per ID at most) or lower dedup.ttl",
			slog.String("rate_basis", basis), slog.Duration("rate_over", over.Round(time.Second)),
			slog.Float64("ids_per_second", rate), slog.Duration("ttl", s.ttl),
			slog.Float64("ids_needed", rate*s.ttl.Seconds()), slog.Int("max_entries", max),
			slog.Duration("ids_kept_for", time.Duration(float64(max)/rate*float64(time.Second)).Round(time.Second)))
	case verdictFits:
		s.rate.warned = 0
		s.log.Info("dedup: ttl × the rate of new IDs fits in max_entries again",
			slog.Float64("ids_per_second", rate), slog.Duration("ttl", s.ttl), slog.Int("max_entries", max))
	}
}

type verdict int

const (
	verdictQuiet verdict = iota
	verdictWarn
	verdictFits
)

// rateVerdict decides judgeRate's log line: warn when ttl × rate exceeds max and no warning
// was given (warned 0) or the rate has doubled or halved since the last one; fits when a
// warning was given and ttl × rate is at most 80% of max. max 0 (unbounded) never warns.
func rateVerdict(rate, warned float64, ttl time.Duration, max int) verdict {
	if max <= 0 || rate <= 0 && warned == 0 {
		return verdictQuiet
	}
	need := rate * ttl.Seconds()
	switch {
	case need > float64(max):
		if warned == 0 || rate >= 2*warned || rate <= warned/2 {
			return verdictWarn
		}
	case warned > 0 && need <= 0.8*float64(max):
		return verdictFits
	}
	return verdictQuiet
}

// judgeHistory estimates the rate of new IDs from the slices on disk (their IDs over the
// time from the oldest slice's start to the newest write) and judges it, so that a store
// that did not fit in its last run says so at start. Called by Open before the writer.
func (s *Store) judgeHistory() {
	if len(s.slices) == 0 || s.opts.MaxEntries <= 0 {
		return
	}
	var n int
	for i := range s.slices {
		n += s.slices[i].count
	}
	span := time.Duration(s.slices[len(s.slices)-1].last - s.slices[0].start)
	if span < rateEvery || n == 0 {
		return // too short a history to tell
	}
	s.judgeRate(float64(n)/span.Seconds(), span, "ids on disk")
}
