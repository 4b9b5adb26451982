package dedup

// On-disk layout (schema 1). The root holds two buckets, and the records and outbox
// buckets once they are used:
//
//	meta    "magic"     -> "mqsidecar-dedup"
//	        "schema"    -> 1 (one byte)
//	        "n"+name    -> uvarint count | varint newest Updated (unix nanos) of slice name
//	        "statstx"   -> bbolt txid (8 bytes) of the last transaction that wrote the
//	                       newest slice's stats; if it is the file's last transaction,
//	                       those stats are exact, else they may lag (see Store.load)
//	slices  name        -> bucket of id -> record, one per time slice
//	records key         -> written (unix nanos, 8 bytes) | value (records.go; created on
//	                       first use, so a file without it is still schema 1)
//	outbox  id          -> JSON of a TxRecord (outbox.go), created on first use
//
// A slice name is 24 bytes, big endian: seq | start | end (unix nanos). seq orders slices
// (newest last) independently of clock jumps; start and end are the slice's nominal time
// span, so a TTL changed across restarts needs no migration. A record is
// version(1) | state | uvarint attempts | varint next-attempt nanos (0 = none) | varint
// updated nanos.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

const schemaVersion = 1

var (
	metaBucket   = []byte("meta")
	slicesBucket = []byte("slices")
	magicKey     = []byte("magic")
	schemaKey    = []byte("schema")
	statsTxKey   = []byte("statstx")
	magicValue   = []byte("mqsidecar-dedup")
)

const (
	nameLen       = 24
	recordVersion = 1
)

// slice is the writer's in-memory view of one slice bucket.
type slice struct {
	name  [nameLen]byte
	seq   uint64
	start int64 // unix nanos
	end   int64 // unix nanos, nominal: no write at or after end goes into this slice
	count int   // keys in the bucket
	last  int64 // newest Updated written (unix nanos); the slice expires at last+TTL

	b     *bolt.Bucket // valid only inside the current write transaction
	c     *bolt.Cursor // b's cursor for the writer's lookups (get), valid as b is
	dirty bool         // count/last changed in the current transaction
}

func sliceName(seq uint64, start, end int64) (n [nameLen]byte) {
	binary.BigEndian.PutUint64(n[0:], seq)
	binary.BigEndian.PutUint64(n[8:], uint64(start))
	binary.BigEndian.PutUint64(n[16:], uint64(end))
	return n
}

func statKey(name []byte) []byte {
	k := make([]byte, 0, 1+nameLen)
	return append(append(k, 'n'), name...)
}

func encodeStat(count int, last int64) []byte {
	b := make([]byte, 0, 2*binary.MaxVarintLen64)
	b = binary.AppendUvarint(b, uint64(count))
	return binary.AppendVarint(b, last)
}

func decodeStat(v []byte) (count int, last int64, ok bool) {
	c, n := binary.Uvarint(v)
	if n <= 0 {
		return 0, 0, false
	}
	l, m := binary.Varint(v[n:])
	if m <= 0 || n+m != len(v) {
		return 0, 0, false
	}
	return int(c), l, true
}

// appendEntry appends the record for e, written at updated (unix nanos).
func appendEntry(b []byte, e Entry, updated int64) []byte {
	b = append(b, recordVersion, byte(e.State))
	b = binary.AppendUvarint(b, uint64(e.Attempts))
	var next int64
	if !e.NextAttempt.IsZero() {
		next = e.NextAttempt.UnixNano()
	}
	b = binary.AppendVarint(b, next)
	return binary.AppendVarint(b, updated)
}

func decodeEntry(v []byte) (Entry, error) {
	bad := func(what string) (Entry, error) {
		return Entry{}, fmt.Errorf("%w: record %x: %s", ErrCorrupt, v, what)
	}
	if len(v) < 2 {
		return bad("too short")
	}
	if v[0] != recordVersion {
		return bad(fmt.Sprintf("record version %d, want %d", v[0], recordVersion))
	}
	st := State(v[1])
	if st == Unknown || st > Completed {
		return bad("bad state")
	}
	p := v[2:]
	att, n := binary.Uvarint(p)
	if n <= 0 || att > uint64(int(^uint(0)>>1)) {
		return bad("bad attempts")
	}
	p = p[n:]
	next, n := binary.Varint(p)
	if n <= 0 {
		return bad("bad next attempt")
	}
	p = p[n:]
	upd, n := binary.Varint(p)
	if n <= 0 || n != len(p) {
		return bad("bad updated time")
	}
	e := Entry{State: st, Attempts: int(att), Updated: time.Unix(0, upd)}
	if next != 0 {
		e.NextAttempt = time.Unix(0, next)
	}
	return e, nil
}

// load validates the file's schema (initialising an empty bbolt file) and reads the slice
// list. A foreign or damaged layout is ErrCorrupt; such a file is never written to.
func (s *Store) load() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("dedup: open %s: %w: %v", s.path, ErrCorrupt, r)
		}
	}()
	var empty bool
	err = s.db.View(func(tx *bolt.Tx) error {
		var names [][]byte
		if err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			names = append(names, append([]byte(nil), name...))
			return nil
		}); err != nil {
			return err
		}
		if len(names) == 0 {
			empty = true
			return nil
		}
		for _, n := range names {
			if !bytes.Equal(n, metaBucket) && !bytes.Equal(n, slicesBucket) && !bytes.Equal(n, recordsBucket) && !bytes.Equal(n, outboxBucket) {
				return fmt.Errorf("%w: unexpected bucket %q", ErrCorrupt, n)
			}
		}
		meta := tx.Bucket(metaBucket)
		if meta == nil {
			return fmt.Errorf("%w: no %q bucket", ErrCorrupt, metaBucket)
		}
		if m := meta.Get(magicKey); !bytes.Equal(m, magicValue) {
			return fmt.Errorf("%w: magic %q, want %q", ErrCorrupt, m, magicValue)
		}
		if v := meta.Get(schemaKey); len(v) != 1 || v[0] != schemaVersion {
			return fmt.Errorf("%w: schema version %v, want [%d]", ErrCorrupt, v, schemaVersion)
		}
		root := tx.Bucket(slicesBucket)
		if root == nil {
			return fmt.Errorf("%w: no %q bucket", ErrCorrupt, slicesBucket)
		}
		statsTx := meta.Get(statsTxKey)
		clean := len(statsTx) == 8 && binary.BigEndian.Uint64(statsTx) == uint64(tx.ID())
		err := root.ForEach(func(k, v []byte) error {
			if v != nil || len(k) != nameLen {
				return fmt.Errorf("%w: unexpected key %x in %q", ErrCorrupt, k, slicesBucket)
			}
			sl := slice{
				seq:   binary.BigEndian.Uint64(k[0:]),
				start: int64(binary.BigEndian.Uint64(k[8:])),
				end:   int64(binary.BigEndian.Uint64(k[16:])),
			}
			copy(sl.name[:], k)
			if c, l, ok := decodeStat(meta.Get(statKey(k))); ok {
				sl.count, sl.last = c, l
			} else {
				// Never persisted: a newest slice younger than statsEvery at a crash.
				sl.count = root.Bucket(k).Stats().KeyN
				sl.last = sl.end
			}
			s.slices = append(s.slices, sl)
			return nil
		})
		if n := len(s.slices); err == nil && n > 0 && !clean {
			// The process stopped without Close: the newest slice's stats may lag by up
			// to statsEvery. Its records were all written before its nominal end, so
			// expiring it no earlier than end+TTL is safe; the count stays approximate.
			// It is marked dirty so the next stats write makes the file clean again.
			nw := &s.slices[n-1]
			nw.last = max(nw.last, nw.end)
			nw.dirty = true
		}
		return err
	})
	if err == nil && empty {
		err = s.db.Update(func(tx *bolt.Tx) error {
			meta, err := tx.CreateBucket(metaBucket)
			if err != nil {
				return err
			}
			if err := meta.Put(magicKey, magicValue); err != nil {
				return err
			}
			if err := meta.Put(schemaKey, []byte{schemaVersion}); err != nil {
				return err
			}
			_, err = tx.CreateBucket(slicesBucket)
			return err
		})
	}
	if err != nil {
		s.slices = nil
		if errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("dedup: open %s: %w", s.path, err)
		}
		return fmt.Errorf("dedup: open %s: initialise: %w", s.path, err)
	}
	if n := len(s.slices); n > 0 {
		s.nextSeq = s.slices[n-1].seq + 1
	}
	return nil
}
