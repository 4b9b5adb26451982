package dedup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Records: a key space beside the message IDs for small values that other parts of the
// sidecar keep durably (the publish endpoint's idempotency keys and receipts: package
// publish, Records). A record lives Options.TTL after its last write, as an ID does.
//
// SwapRecord is atomic per key and durable when it returns nil: f runs inside a bbolt
// read-write transaction whose commit fsyncs, as the writer's do. Concurrent SwapRecords
// share commits (bbolt's Batch), so each costs about one commit however many wait. They do
// not go through the writer's queue: a record is written when SwapRecord returns, not
// group-committed with IDs.
//
// Expiry is lazy: a record older than TTL reads as absent, and every commit of
// SwapRecords deletes the expired records among the next sweepStep keys after where the
// last sweep stopped, so stale records are reclaimed as records are written, without a
// scan of the whole key space at once.

var recordsBucket = []byte("records")

// sweepStep is how many keys one SwapRecord commit examines for expiry.
const sweepStep = 64

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
	err := s.db.Batch(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(recordsBucket)
		if err != nil {
			return err
		}
		now := s.now().UnixNano()
		var old []byte
		if v := b.Get(k); len(v) >= 8 && now-int64(binary.BigEndian.Uint64(v)) < int64(s.ttl) {
			old = append([]byte(nil), v[8:]...)
		}
		next, write := f(old)
		if write {
			if next == nil {
				err = b.Delete(k)
			} else {
				err = b.Put(k, append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(next)), uint64(now)), next...))
			}
			if err != nil {
				return err
			}
		}
		return s.sweepRecords(b, now)
	})
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("dedup: record %q: %w", key, ErrClosed)
	}
	if err != nil {
		return fmt.Errorf("dedup: record %q: %w", key, err)
	}
	return nil
}

// sweepRecords deletes the expired records among the sweepStep keys after the last
// sweep's position (wrapping around), in the caller's transaction.
func (s *Store) sweepRecords(b *bolt.Bucket, now int64) error {
	s.recSweep.Lock()
	defer s.recSweep.Unlock()
	c := b.Cursor()
	k, v := c.Seek(s.recSweepAt)
	if k == nil {
		k, v = c.First()
	}
	for range sweepStep {
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
