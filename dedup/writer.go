package dedup

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// run is the writer goroutine: it owns s.slices and is the only caller of db.Update.
func (s *Store) run() {
	// A file reopened after a long pause (or with a smaller TTL or MaxEntries) may hold
	// slices that are due now.
	if s.needsHousekeeping(s.now().UnixNano()) {
		s.commit(nil)
	}
	tick := time.NewTicker(min(max(s.width/8, 100*time.Millisecond), time.Minute))
	defer tick.Stop()
	batch := make([]request, 0, s.opts.MaxBatch)
	for {
		select {
		case r := <-s.queue:
			batch = s.linger(s.fill(append(batch[:0], r)))
			s.commit(batch)
			clear(batch) // drop references to callbacks
			// Let the producers just released by the callbacks queue their next record
			// before the next batch is cut: with N producers waiting on commits, batches
			// then hold ~N records instead of alternating between two halves of ~N/2.
			runtime.Gosched()
		case <-tick.C:
			s.watchRate(s.now())
			if s.needsHousekeeping(s.now().UnixNano()) {
				s.commit(nil)
			} else if n := len(s.slices); n > 0 && s.slices[n-1].dirty && time.Since(s.statsWritten) >= statsEvery {
				// Idle after writes: persist the newest slice's stats, so that a crash
				// now leaves exact stats behind.
				s.commitWith(nil, true)
			}
		case <-s.stop:
			s.drain(batch)
			return
		}
	}
}

// linger waits for more records to join a batch that is not full: a commit costs two
// fdatasyncs plus one page write per touched leaf whatever its size, so fewer, larger
// commits cost much less CPU and disk. It waits up to Options.MaxLinger from the batch's
// first record, or only up to Options.Linger once Flush was called (a caller waits), or
// until MaxBatch records are waiting. It sleeps meanwhile rather than taking each record
// as it is queued, so a record queued during the wait wakes nobody (a Put that fills the
// queue to MaxBatch nudges the writer through Flush).
func (s *Store) linger(batch []request) []request {
	wait := max(s.opts.Linger, s.opts.MaxLinger)
	if wait <= 0 || len(batch) >= s.opts.MaxBatch {
		return batch
	}
	// Puts nudge the writer by the records it holds plus those queued (see queued); one that
	// looked before holding was set queued its record before, so the queue shows it here.
	s.holding.Store(int64(len(batch)))
	defer s.holding.Store(0)
	if len(batch)+len(s.queue) >= s.opts.MaxBatch {
		return s.fill(batch)
	}
	began := time.Now()
	t := time.NewTimer(wait)
	defer t.Stop()
	flushed := false
	for {
		select {
		case <-s.flush:
			if len(batch)+len(s.queue) >= s.opts.MaxBatch {
				return s.fill(batch)
			}
			if !flushed {
				flushed = true
				left := s.opts.Linger - time.Since(began)
				if left <= 0 {
					return s.fill(batch)
				}
				t.Reset(left)
			}
		case <-t.C:
			return s.fill(batch)
		case <-s.stop:
			return s.fill(batch)
		}
	}
}

// Flush asks the writer to commit what is queued without lingering past Options.Linger:
// call it before blocking on a record's done callback. It never blocks. A Flush that finds
// the writer committing applies to its next batch.
func (s *Store) Flush() {
	select {
	case s.flush <- struct{}{}:
	default:
	}
}

// fill adds queued requests to batch without blocking, up to MaxBatch.
func (s *Store) fill(batch []request) []request {
	for len(batch) < s.opts.MaxBatch {
		select {
		case r := <-s.queue:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// drain commits everything queued after Close set closed. A Put that saw closed == false
// is counted in inPut until its send is done, so once inPut is 0 the queue holds every
// request that will ever arrive.
func (s *Store) drain(batch []request) {
	for {
		batch = s.fill(batch[:0])
		if len(batch) > 0 {
			s.commit(batch)
			clear(batch)
			continue
		}
		if s.inPut.Load() == 0 {
			if batch = s.fill(batch[:0]); len(batch) == 0 {
				// Persist the newest slice's stats so the next Open needs no guesswork.
				if n := len(s.slices); n > 0 && s.slices[n-1].dirty {
					s.commitWith(nil, true)
				}
				return
			}
			s.commit(batch)
			clear(batch)
			continue
		}
		// A Put is between its closed check and its send: wait for the send briefly.
		select {
		case r := <-s.queue:
			batch = append(batch[:0], r)
			s.commit(batch)
			clear(batch)
		case <-time.After(time.Millisecond):
		}
	}
}

// needsHousekeeping reports whether a slice is due for expiry or eviction. Writer only.
func (s *Store) needsHousekeeping(now int64) bool {
	var total int
	for i := range s.slices {
		if s.slices[i].last+int64(s.ttl) <= now {
			return true
		}
		total += s.slices[i].count
	}
	return s.opts.MaxEntries > 0 && len(s.slices) > 1 && total > s.opts.MaxEntries
}

// txState is the writer's state as changed by one transaction; it replaces the committed
// state only if the transaction commits.
type txState struct {
	slices           []slice
	nextSeq          uint64
	expired, evicted int
	added            int64 // IDs newly counted in a slice (the write rate, see watchRate)
	arena            []byte
	// flushStats writes the newest slice's stats too (they are otherwise written at most
	// every statsEvery, see apply); wroteStats reports that all stats are now on disk.
	flushStats, wroteStats bool
	size                   int64 // tx.Size() after the writes
}

// statsEvery bounds how often the newest slice's count and last write time are persisted.
// After a crash they may be up to this stale; Open then treats the newest slice
// conservatively (see load).
const statsEvery = time.Second

// commit writes batch (possibly empty: housekeeping only) in one transaction, then calls
// every done callback in order with the result. Writer only.
func (s *Store) commit(batch []request) {
	s.commitWith(batch, false)
}

// commitWith is commit; flush also persists the newest slice's stats (used by Close).
//
// A commit that fails because the disk is full is not reported to the callbacks: the
// writer pauses (Ready says why) and tries the same batch again, first after
// pauseRetryMin, then at most every pauseRetryMax, until it commits, so nothing is
// acknowledged that is not on disk and nothing queued is lost. Meanwhile the queue fills
// and Put blocks (backpressure up to the producers). Only Close ends the pause: it tries
// once more and then fails what is left with an error wrapping ErrDiskFull.
func (s *Store) commitWith(batch []request, flush bool) {
	began := time.Now()
	err := s.tryCommit(batch, flush, began)
	if diskFull(err) {
		s.st.commitErrors.Add(1)
		err = s.pause(batch, flush, err)
	}
	if err != nil {
		err = fmt.Errorf("dedup: commit %d records to %s: %w", len(batch), s.path, err)
		s.st.commitErrors.Add(1)
		if !s.failing {
			s.failing = true
			s.log.Error("dedup commits failing; records are not being stored", slog.Any("error", err))
		}
	} else if s.failing {
		s.failing = false
		s.log.Info("dedup commits recovered")
	}
	for i := range batch {
		r := &batch[i]
		switch {
		case r.udone == nil:
			r.done(err)
		case err != nil:
			r.udone(Entry{}, err)
		case r.err != nil:
			r.udone(Entry{}, fmt.Errorf("dedup: update %q: %w", r.id, r.err))
		default:
			r.udone(r.prior, nil)
		}
	}
}

// Retry intervals of a commit paused on a full disk. Each retry costs a failed
// transaction and, after it, bbolt's rescan of the free pages (NoFreelistSync).
var (
	pauseRetryMin = 100 * time.Millisecond
	pauseRetryMax = 5 * time.Second
)

// pause retries the batch whose commit failed with err, a full disk, until it commits
// (nil) or Close was called and one more try failed (that error, wrapping ErrDiskFull).
// Ready reports the pause meanwhile. Writer only.
func (s *Store) pause(batch []request, flush bool, err error) error {
	since := time.Now()
	s.paused.Store(&pauseState{since: since, waiting: len(batch) + len(s.queue), err: err})
	s.log.Error("dedup store paused: the disk is full; nothing more is admitted or acknowledged until its records can be written (free space on the volume, or lower dedup.max_entries); retrying",
		slog.Int("records_waiting", len(batch)), slog.Int64("file_bytes", s.fileSize()), slog.Any("error", err))
	wait := pauseRetryMin
	for tries := 1; ; tries++ {
		stopping := false
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
			stopping = true
		}
		err = s.tryCommit(batch, flush, time.Now())
		if err == nil {
			s.paused.Store(nil)
			s.log.Info("dedup store resumed: records are written again",
				slog.Duration("paused", time.Since(since)), slog.Int("retries", tries))
			return nil
		}
		if !diskFull(err) {
			s.paused.Store(nil)
			return err
		}
		if stopping {
			// Close: what is left stays unacknowledged (the broker redelivers it). Ready
			// keeps saying why until the process ends.
			return fmt.Errorf("%w: %w", ErrDiskFull, err)
		}
		s.st.commitErrors.Add(1)
		s.paused.Store(&pauseState{since: since, waiting: len(batch) + len(s.queue), err: err})
		wait = min(2*wait, pauseRetryMax)
	}
}

// pauseState is what Ready reports while commits are paused on a full disk.
type pauseState struct {
	since   time.Time
	waiting int // records of the paused batch plus those queued behind it, when last tried
	err     error
}

// tryCommit writes batch in one transaction and, when it commits, makes its effects the
// writer's state. It calls no callback. Writer only.
func (s *Store) tryCommit(batch []request, flush bool, began time.Time) error {
	for i := range batch {
		batch[i].prior, batch[i].err = Entry{}, nil // a retried batch is applied afresh
	}
	now := s.now().UnixNano()
	ts := txState{
		slices:     slices.Clone(s.slices),
		nextSeq:    s.nextSeq,
		arena:      s.arena[:0],
		flushStats: flush || began.Sub(s.statsWritten) >= statsEvery,
	}
	err := s.db.Update(func(tx *bolt.Tx) (err error) {
		defer func() {
			if r := recover(); r != nil {
				// bbolt panics on some damaged pages; fail the batch instead of the process.
				err = fmt.Errorf("%w: %v", ErrCorrupt, r)
			}
		}()
		return s.apply(tx, now, batch, &ts)
	})
	if err != nil {
		return err
	}
	took := time.Since(began)
	for i := range ts.slices {
		ts.slices[i].b, ts.slices[i].c = nil, nil
	}
	s.slices, s.nextSeq = ts.slices, ts.nextSeq
	s.publishSlices()
	s.added += ts.added
	s.st.commits.Add(1)
	s.st.lastBatch.Store(int64(len(batch)))
	s.st.lastCommit.Store(int64(took))
	if s.opts.OnCommit != nil {
		s.opts.OnCommit(len(batch), took, s.st.entries.Load())
	}
	if ts.size != s.dataSize {
		// The file grows in steps; stat it only when bbolt's high-water mark moved.
		s.dataSize = ts.size
		s.st.fileBytes.Store(s.fileSize())
	}
	if ts.wroteStats {
		s.statsWritten = began
	}
	if cap(ts.arena) <= 1<<20 {
		s.arena = ts.arena
	}
	s.st.expired.Add(uint64(ts.expired))
	s.st.evicted.Add(uint64(ts.evicted))
	if ts.expired > 0 {
		s.log.Debug("dedup slices expired", slog.Int("slices", ts.expired))
	}
	if ts.evicted > 0 && !s.evictWarned {
		s.evictWarned = true
		s.log.Warn("dedup store reached max_entries; forgetting the oldest IDs before their TTL (logged once)",
			slog.Int("max_entries", s.opts.MaxEntries), slog.Duration("ttl", s.ttl))
	}
	return nil
}

// apply performs expiry, the batch's writes in order, and eviction inside tx.
func (s *Store) apply(tx *bolt.Tx, now int64, batch []request, ts *txState) error {
	meta, root := tx.Bucket(metaBucket), tx.Bucket(slicesBucket)
	if meta == nil || root == nil {
		return fmt.Errorf("%w: root buckets missing", ErrCorrupt)
	}
	drop := func(sl *slice) error {
		if err := root.DeleteBucket(sl.name[:]); err != nil {
			return fmt.Errorf("drop slice %x: %w", sl.name, err)
		}
		return meta.Delete(statKey(sl.name[:]))
	}
	bucket := func(sl *slice) (*bolt.Bucket, error) {
		if sl.b == nil {
			if sl.b = root.Bucket(sl.name[:]); sl.b == nil {
				return nil, fmt.Errorf("%w: slice bucket %x missing", ErrCorrupt, sl.name)
			}
		}
		return sl.b, nil
	}

	// Expiry: a slice whose newest record is TTL old holds only expired records.
	kept := ts.slices[:0]
	for i := range ts.slices {
		sl := ts.slices[i]
		if sl.last+int64(s.ttl) <= now {
			if err := drop(&sl); err != nil {
				return err
			}
			ts.expired++
			continue
		}
		kept = append(kept, sl)
	}
	ts.slices = kept

	// Keys and values must stay valid until the commit; one arena serves the batch (when
	// it grows, earlier slices keep pointing at the old, unchanged array). It is reused by
	// the next commit: bbolt has copied everything into pages by then.
	arena := ts.arena
	defer func() { ts.arena = arena }()
	for i := range batch {
		r := &batch[i]
		arena = append(arena, r.id...)
		key := arena[len(arena)-len(r.id) : len(arena) : len(arena)]

		var known *[nameLen]byte // name of the slice known to hold key, if any
		if r.f != nil {
			prior, in, err := s.lookup(ts, key, now, bucket)
			if err != nil {
				r.err = err
				continue
			}
			next, write := r.f(prior)
			r.prior = prior
			if !write {
				continue
			}
			if next.State > Completed || next.Attempts < 0 {
				r.err = fmt.Errorf("%w: update to %s with %d attempts", ErrInvalid, next.State, next.Attempts)
				continue
			}
			r.e, known = next, in
		}

		if r.e.State == Unknown {
			// Delete from every slice, or an older record would reappear.
			for j := range ts.slices {
				sl := &ts.slices[j]
				b, err := bucket(sl)
				if err != nil {
					return err
				}
				if sl.get(key) != nil {
					if err := b.Delete(key); err != nil {
						return fmt.Errorf("delete %q: %w", r.id, err)
					}
					sl.count--
					sl.dirty = true
				}
			}
			continue
		}

		cur, err := s.current(root, ts, now)
		if err != nil {
			return err
		}
		n := len(arena)
		arena = appendEntry(arena, r.e, now)
		val := arena[n:len(arena):len(arena)]
		switch {
		case known != nil && *known == cur.name:
			// Counted already: the slice taking the write holds the key.
		case known == nil && r.f != nil:
			// The lookup searched every slice, the one taking the write included (or it
			// is new): the key is in none, so there is no need to look again.
			cur.count++
			ts.added++
		case cur.get(key) == nil:
			cur.count++
			ts.added++
		}
		if err := cur.b.Put(key, val); err != nil {
			return fmt.Errorf("put %q: %w", r.id, err)
		}
		cur.dirty = true
		cur.last = max(cur.last, now)
	}

	// Eviction: drop the oldest slices while over MaxEntries, never the newest.
	if s.opts.MaxEntries > 0 {
		total := 0
		for i := range ts.slices {
			total += ts.slices[i].count
		}
		for total > s.opts.MaxEntries && len(ts.slices) > 1 {
			if err := drop(&ts.slices[0]); err != nil {
				return err
			}
			total -= ts.slices[0].count
			ts.slices = ts.slices[1:]
			ts.evicted++
		}
	}

	// Persist stats: always for older slices that changed (by the rotation that sealed
	// them, or by a delete), for the newest only now and then: it changes on every commit,
	// and writing it each time would add a page to each. When no stats are left unwritten,
	// statsTx records this transaction's id, which tells Open that the stats are exact.
	clean := true
	for i := range ts.slices {
		sl := &ts.slices[i]
		if !sl.dirty {
			continue
		}
		if newest := i == len(ts.slices)-1; newest && !ts.flushStats {
			clean = false
			continue
		}
		if err := meta.Put(statKey(sl.name[:]), encodeStat(sl.count, sl.last)); err != nil {
			return fmt.Errorf("write slice stats: %w", err)
		}
		sl.dirty = false
	}
	if clean {
		var id [8]byte
		binary.BigEndian.PutUint64(id[:], uint64(tx.ID()))
		if err := meta.Put(statsTxKey, id[:]); err != nil {
			return fmt.Errorf("write stats tx: %w", err)
		}
		ts.wroteStats = true
	}
	ts.size = tx.Size()
	return nil
}

// lookup returns what Get would report for key inside tx, and the name of the slice whose
// bucket holds the key (nil when none does, expired records included).
func (s *Store) lookup(ts *txState, key []byte, now int64, bucket func(*slice) (*bolt.Bucket, error)) (Entry, *[nameLen]byte, error) {
	for i := len(ts.slices) - 1; i >= 0; i-- {
		sl := &ts.slices[i]
		if _, err := bucket(sl); err != nil { // opens sl.b, where sl.get looks
			return Entry{}, nil, err
		}
		v := sl.get(key)
		if v == nil {
			continue
		}
		name := sl.name
		e, err := decodeEntry(v)
		if err != nil {
			return Entry{}, nil, err
		}
		if now >= e.Updated.UnixNano()+int64(s.ttl) {
			return Entry{}, &name, nil // expired: as Get reports it
		}
		return e, &name, nil
	}
	return Entry{}, nil, nil
}

// get is sl.b.Get(key) inside the write transaction, through one cursor the slice keeps for
// the transaction: bbolt's Get makes a new cursor and grows its stack for every lookup
// (three allocations on a three-level tree), and the writer looks every ID it writes up in
// every slice until it finds it — in all of them for a new ID. A cursor that seeks anew for
// each lookup sees the transaction's writes as Get does.
func (sl *slice) get(key []byte) []byte {
	if sl.c == nil {
		sl.c = sl.b.Cursor()
	}
	k, v := sl.c.Seek(key)
	if !bytes.Equal(k, key) {
		return nil // not there; v is nil for a nested bucket's key, as Get reports it
	}
	return v
}

// current returns the slice that takes writes at now, opening a new one when the newest is
// past its end, far ahead of now (the clock jumped back), or full.
func (s *Store) current(root *bolt.Bucket, ts *txState, now int64) (*slice, error) {
	if n := len(ts.slices); n > 0 {
		c := &ts.slices[n-1]
		if now < c.end && now >= c.start-int64(s.width) && (s.sliceCap == 0 || c.count < s.sliceCap) {
			if c.b == nil {
				if c.b = root.Bucket(c.name[:]); c.b == nil {
					return nil, fmt.Errorf("%w: slice bucket %x missing", ErrCorrupt, c.name)
				}
			}
			return c, nil
		}
		ts.nextSeq = max(ts.nextSeq, c.seq+1)
	}
	sl := slice{seq: ts.nextSeq, start: now, end: now + int64(s.width), last: now, dirty: true}
	sl.name = sliceName(sl.seq, sl.start, sl.end)
	b, err := root.CreateBucket(sl.name[:])
	if err != nil {
		return nil, fmt.Errorf("create slice %x: %w", sl.name, err)
	}
	sl.b = b
	ts.nextSeq++
	ts.slices = append(ts.slices, sl)
	return &ts.slices[len(ts.slices)-1], nil
}
