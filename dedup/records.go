package dedup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Records: a key space beside the message IDs for small values that other parts of the
// sidecar keep durably (the publish endpoint's idempotency keys and receipts: package
// publish, Records). A record lives Options.TTL after its last write, as an ID does.
//
// SwapRecord is atomic per key and durable when it returns nil. f is first called on a
// read-only view: when it chooses not to write, that is the answer and nothing is
// committed (a read costs no fsync). Otherwise f runs again inside a bbolt read-write
// transaction whose commit fsyncs, as the writer's do. Concurrent SwapRecords share
// commits without waiting on a timer (group commit, as the writer's queue does for IDs):
// the writes queued while a commit runs are all written by the next one, in the order they
// were queued, so a key written twice in one commit ends as the later write left it. Each
// SwapRecord returns only after the commit holding its write returned (fsynced), so each
// costs about one commit however many wait. They do not go through the writer's queue: a
// record is written when SwapRecord returns, not group-committed with IDs.
//
// Expiry is lazy: a record older than TTL reads as absent, and every commit of
// SwapRecords deletes the expired records among the next sweepStep keys (plus two per
// write it carries, so the sweep keeps pace with the writes) after where the last sweep
// stopped, so stale records are reclaimed as records are written, without a scan of the
// whole key space at once.

var recordsBucket = []byte("records")

// sweepStep is how many keys one SwapRecord commit examines for expiry, beside two per
// write it carries.
const sweepStep = 64

// recWrite is one SwapRecord's write waiting for a commit (see commitRecords).
type recWrite struct {
	key []byte
	f   func(old []byte) (next []byte, write bool)
	err error // this write's own failure, or the commit's
	// done receives true once the commit holding the write returned (err is its result),
	// or false: the write is still queued and its caller leads the next commit.
	done chan bool
}

// recQueue is the group commit of SwapRecords: the writes waiting for a commit, and
// whether a caller is leading commits (then it takes the queue when its commit ends).
type recQueue struct {
	mu      sync.Mutex
	waiting []*recWrite
	leading bool
	// committed, for tests, is called after each commit that returned nil, with its keys.
	committed func(keys [][]byte)
}

// SwapRecord reads the record of key (nil when absent or expired), calls f with it and
// writes next when write is true (nil deletes the record), atomically and durably; see
// Records above. f may be called more than once and must not call the store. It fails
// with an error wrapping ErrClosed after Close, ErrInvalid for an empty or too long key.
func (s *Store) SwapRecord(ctx context.Context, key string, f func(old []byte) (next []byte, write bool)) error {
	if len(key) == 0 || len(key) > MaxIDLen {
		return fmt.Errorf("dedup: record key of %d bytes (want 1..%d): %w", len(key), MaxIDLen, ErrInvalid)
	}
	if s.closed.Load() {
		return fmt.Errorf("dedup: record %q: %w", key, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	k := []byte(key)
	read := false
	err := s.db.View(func(tx *bolt.Tx) error {
		var old []byte
		if b := tx.Bucket(recordsBucket); b != nil {
			old = s.liveRecord(b.Get(k))
		}
		_, write := f(old)
		read = !write
		return nil
	})
	if err == nil && read {
		return nil
	}
	if err == nil {
		err = s.queueRecord(&recWrite{key: k, f: f, done: make(chan bool, 1)})
	}
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("dedup: record %q: %w", key, ErrClosed)
	}
	if err != nil {
		return fmt.Errorf("dedup: record %q: %w", key, err)
	}
	return nil
}

// queueRecord queues w for the next commit and returns its result once that commit
// returned. The first caller to find no commit led leads: it commits what is queued
// (its own write among them), answers the others, and hands the lead to the first write
// queued meanwhile, whose caller commits the next batch; so a caller commits at most the
// batch that holds its own write, and nobody waits on a timer.
func (s *Store) queueRecord(w *recWrite) error {
	q := &s.recs
	q.mu.Lock()
	q.waiting = append(q.waiting, w)
	lead := !q.leading
	q.leading = true
	q.mu.Unlock()
	if !lead && <-w.done {
		return w.err
	}
	q.mu.Lock()
	batch := q.waiting
	q.waiting = nil
	q.mu.Unlock()
	s.commitRecords(batch)
	for _, o := range batch {
		if o != w {
			o.done <- true
		}
	}
	q.mu.Lock()
	if len(q.waiting) == 0 {
		q.leading = false
		q.mu.Unlock()
		return w.err
	}
	next := q.waiting[0]
	q.mu.Unlock()
	next.done <- false
	return w.err
}

// commitRecords writes batch in one transaction, in order, and sets each write's err. A
// write that fails by itself (bbolt refuses its key or value) fails alone: the others are
// committed again without it; any other failure is every write's.
func (s *Store) commitRecords(batch []*recWrite) {
	for len(batch) > 0 {
		var failed *recWrite
		err := s.db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(recordsBucket)
			if err != nil {
				return err
			}
			now := s.now().UnixNano()
			for _, w := range batch {
				next, write := w.f(s.liveRecord(b.Get(w.key)))
				if !write {
					continue
				}
				if next == nil {
					err = b.Delete(w.key)
				} else {
					err = b.Put(w.key, append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(next)), uint64(now)), next...))
				}
				if err != nil {
					failed = w
					return err
				}
			}
			return s.sweepRecords(b, now, sweepStep+2*len(batch))
		})
		if failed != nil && len(batch) > 1 {
			failed.err = err
			batch = slices.DeleteFunc(slices.Clone(batch), func(w *recWrite) bool { return w == failed })
			continue
		}
		for _, w := range batch {
			w.err = err
		}
		if err == nil && s.recs.committed != nil {
			keys := make([][]byte, len(batch))
			for i, w := range batch {
				keys[i] = w.key
			}
			s.recs.committed(keys)
		}
		return
	}
}

// liveRecord returns a copy of the value of the stored record v, nil when v is absent or
// expired.
func (s *Store) liveRecord(v []byte) []byte {
	if len(v) < 8 || s.now().UnixNano()-int64(binary.BigEndian.Uint64(v)) >= int64(s.ttl) {
		return nil
	}
	return append([]byte(nil), v[8:]...)
}

// sweepRecords deletes the expired records among the step keys after the last sweep's
// position (wrapping around), in the caller's transaction.
func (s *Store) sweepRecords(b *bolt.Bucket, now int64, step int) error {
	s.recSweep.Lock()
	defer s.recSweep.Unlock()
	c := b.Cursor()
	k, v := c.Seek(s.recSweepAt)
	if k == nil {
		k, v = c.First()
	}
	for range step {
		if k == nil {
			break
		}
		if len(v) < 8 || now-int64(binary.BigEndian.Uint64(v)) >= int64(s.ttl) {
			at := append([]byte(nil), k...)
			if err := c.Delete(); err != nil {
				return err
			}
			k, v = c.Seek(at) // the next key: Next after Delete may skip one
			continue
		}
		k, v = c.Next()
	}
	s.recSweepAt = append(s.recSweepAt[:0], k...)
	return nil
}
