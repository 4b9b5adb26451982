package dedup

// The outbox: prepared transactional messages (docs/guarantees.md, "Transactions"), kept
// in the same file as the dedup records, in a bucket of its own ("outbox": id -> JSON of
// TxRecord). Unlike Put, every outbox call is synchronous and returns only after bbolt's
// commit (fdatasync), so a nil error means the record survives a kill -9: the transaction
// endpoint answers a prepare 2xx only after that. An outbox write is one small bbolt
// transaction of its own; it does not go through the group-committing writer.
//
// Claims: one process holds the file (the flock), so a lease written by an earlier process
// is a dead process's and counts as expired (the leases held now are also kept in memory);
// within the process, a live lease keeps the commit handler and the checker from resolving
// one record at once. Owners are per claim (the manager makes each unique), so TxUpdate
// after a lost lease fails instead of overwriting the new holder's work.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TxState is where a transactional message is in its life.
type TxState uint8

const (
	// TxUnknown: no such record (never prepared, or forgotten after its retention).
	TxUnknown TxState = iota
	// TxPrepared: stored, no decision yet. Never published in this state.
	TxPrepared
	// TxCommitting: the decision is commit (the app's commit or its check URL); the publish
	// has not been confirmed yet. Whoever holds it publishes it, with the fixed ID.
	TxCommitting
	// TxCommitted: published; Receipt holds the broker's receipt. Final.
	TxCommitted
	// TxRolledBack: discarded; never published. Final.
	TxRolledBack
)

// String returns the state's name as the transaction endpoint reports it.
func (s TxState) String() string {
	switch s {
	case TxUnknown:
		return "unknown"
	case TxPrepared:
		return "prepared"
	case TxCommitting:
		return "committing"
	case TxCommitted:
		return "committed"
	case TxRolledBack:
		return "rolled_back"
	}
	return fmt.Sprintf("tx_state(%d)", uint8(s))
}

// Final reports whether s is a decision carried out (committed or rolled back).
func (s TxState) Final() bool { return s == TxCommitted || s == TxRolledBack }

// TxRecord is one transactional message in the outbox. Message and Receipt are opaque to
// the stores (the transaction manager's encoding).
type TxRecord struct {
	ID      string  `json:"id"`
	State   TxState `json:"state"`
	Message []byte  `json:"message,omitempty"`
	Receipt []byte  `json:"receipt,omitempty"`
	// Prepared is when the prepare was stored; Resolved when a final state was written.
	Prepared time.Time `json:"prepared"`
	Resolved time.Time `json:"resolved,omitzero"`
	// NextCheck is when the checker looks at an unresolved record next.
	NextCheck time.Time `json:"next_check,omitzero"`
	// Checks counts the check-backs asked (and publishes tried) by the checker.
	Checks int `json:"checks,omitempty"`
	// Owner and LeaseUntil: the claim of whoever is resolving the record now.
	Owner      string    `json:"owner,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`
}

// Outbox errors.
var (
	// ErrTxExists: TxPrepare of an ID already in the outbox (the existing record is returned).
	ErrTxExists = errors.New("transaction id already prepared")
	// ErrTxNotFound: no record of that ID.
	ErrTxNotFound = errors.New("transaction not found")
	// ErrTxClaimed: another owner holds a live lease on the record (or, for TxUpdate, the
	// caller's lease is gone): the caller must not act on it now.
	ErrTxClaimed = errors.New("transaction is being resolved elsewhere")
)

// Outbox is what the transaction manager needs from a store: the bbolt Store and the
// Redis store implement it (dedup/storetest holds both to one suite).
type Outbox interface {
	// TxPrepare stores r (its State must be TxPrepared) durably, unless its ID exists:
	// then it returns the stored record and an error wrapping ErrTxExists.
	TxPrepare(ctx context.Context, r TxRecord) (TxRecord, error)
	// TxGet returns the record of id, or an error wrapping ErrTxNotFound.
	TxGet(ctx context.Context, id string) (TxRecord, error)
	// TxClaim gives owner a lease on an unresolved record until now+lease, durably, and
	// returns the record as claimed. A final record is returned as it is with a nil error
	// (nothing to claim: the caller reads its State). A live lease of another owner fails
	// with ErrTxClaimed (the record is returned too); an unknown ID with ErrTxNotFound.
	TxClaim(ctx context.Context, id, owner string, lease time.Duration) (TxRecord, error)
	// TxUpdate writes r (State, Receipt, NextCheck, Checks) as owner, who must hold the
	// record's live lease (else ErrTxClaimed, nothing written), and ends the lease. A final
	// state drops the message and keeps the record for the store's retention.
	TxUpdate(ctx context.Context, owner string, r TxRecord) error
	// TxDue returns up to limit IDs of unresolved records whose NextCheck is not after now
	// and that no live lease holds (another owner's), oldest NextCheck first.
	TxDue(ctx context.Context, now time.Time, limit int) ([]string, error)
}

var outboxBucket = []byte("outbox")

var _ Outbox = (*Store)(nil)

func (s *Store) txView(id string, f func(b *bolt.Bucket) error) error {
	if s.closed.Load() {
		return fmt.Errorf("dedup: outbox %q: %w", id, ErrClosed)
	}
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(outboxBucket)
		if b == nil {
			return fmt.Errorf("dedup: outbox %q: %w", id, ErrTxNotFound)
		}
		return f(b)
	})
}

// txUpdate runs f in a bbolt write transaction on the outbox bucket (created when
// missing); bbolt's commit fsyncs before it returns.
func (s *Store) txUpdate(id string, f func(b *bolt.Bucket) error) error {
	if s.closed.Load() {
		return fmt.Errorf("dedup: outbox %q: %w", id, ErrClosed)
	}
	if len(id) == 0 || len(id) > MaxIDLen {
		return fmt.Errorf("dedup: outbox: id of %d bytes: %w", len(id), ErrInvalid)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(outboxBucket)
		if err != nil {
			return err
		}
		return f(b)
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return fmt.Errorf("dedup: outbox %q: %w", id, ErrClosed)
	}
	return err
}

// mustGetTx is getTx with an absent record an error wrapping ErrTxNotFound.
func mustGetTx(b *bolt.Bucket, id string) (TxRecord, error) {
	r, found, err := getTx(b, id)
	if err == nil && !found {
		err = fmt.Errorf("dedup: outbox %q: %w", id, ErrTxNotFound)
	}
	return r, err
}

func getTx(b *bolt.Bucket, id string) (TxRecord, bool, error) {
	v := b.Get([]byte(id))
	if v == nil {
		return TxRecord{}, false, nil
	}
	var r TxRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return TxRecord{}, false, fmt.Errorf("dedup: outbox %q: %w: %v", id, ErrCorrupt, err)
	}
	return r, true, nil
}

func putTx(b *bolt.Bucket, r TxRecord) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.Put([]byte(r.ID), v)
}

// TxPrepare implements Outbox.
func (s *Store) TxPrepare(_ context.Context, r TxRecord) (TxRecord, error) {
	if r.State != TxPrepared {
		return TxRecord{}, fmt.Errorf("dedup: outbox prepare %q: state %s: %w", r.ID, r.State, ErrInvalid)
	}
	var existing TxRecord
	err := s.txUpdate(r.ID, func(b *bolt.Bucket) error {
		old, found, err := getTx(b, r.ID)
		if err != nil {
			return err
		}
		if found {
			existing = old
			return fmt.Errorf("dedup: outbox prepare %q: %w", r.ID, ErrTxExists)
		}
		return putTx(b, r)
	})
	if err != nil {
		return existing, err
	}
	return r, nil
}

// TxGet implements Outbox.
func (s *Store) TxGet(_ context.Context, id string) (TxRecord, error) {
	var r TxRecord
	err := s.txView(id, func(b *bolt.Bucket) (err error) {
		r, err = mustGetTx(b, id)
		return err
	})
	return r, err
}

// TxClaim implements Outbox. A lease of another owner is that of a process that held the
// file before this one, so it is taken over.
func (s *Store) TxClaim(_ context.Context, id, owner string, lease time.Duration) (TxRecord, error) {
	var r TxRecord
	err := s.txUpdate(id, func(b *bolt.Bucket) error {
		old, err := mustGetTx(b, id)
		if err != nil {
			return err
		}
		r = old
		if old.State.Final() {
			return nil
		}
		now := s.now()
		if now.Before(old.LeaseUntil) && s.inProcessLease(id) {
			return fmt.Errorf("dedup: outbox %q: %w", id, ErrTxClaimed)
		}
		r.Owner, r.LeaseUntil = owner, now.Add(lease)
		s.markLease(id, true)
		return putTx(b, r)
	})
	return r, err
}

// inProcessLease reports whether id's lease is held in this process right now. Leases in
// the file outlive a crash, but the process that held them did not.
func (s *Store) inProcessLease(id string) bool {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	_, ok := s.leases[id]
	return ok
}

func (s *Store) markLease(id string, held bool) {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	if s.leases == nil {
		s.leases = map[string]struct{}{}
	}
	if held {
		s.leases[id] = struct{}{}
	} else {
		delete(s.leases, id)
	}
}

// TxUpdate implements Outbox.
func (s *Store) TxUpdate(_ context.Context, owner string, r TxRecord) error {
	if r.State == TxUnknown || r.State > TxRolledBack {
		return fmt.Errorf("dedup: outbox update %q: state %s: %w", r.ID, r.State, ErrInvalid)
	}
	return s.txUpdate(r.ID, func(b *bolt.Bucket) error {
		old, err := mustGetTx(b, r.ID)
		if err != nil {
			return err
		}
		if old.Owner != owner || !s.now().Before(old.LeaseUntil) {
			return fmt.Errorf("dedup: outbox update %q: %w", r.ID, ErrTxClaimed)
		}
		next := old
		next.State, next.Receipt, next.NextCheck, next.Checks = r.State, r.Receipt, r.NextCheck, r.Checks
		next.Owner, next.LeaseUntil = "", time.Time{}
		if r.State.Final() {
			next.Message, next.NextCheck, next.Resolved = nil, time.Time{}, s.now()
		}
		s.markLease(r.ID, false)
		return putTx(b, next)
	})
}

// TxDue implements Outbox. It also forgets final records resolved longer than the store's
// TTL ago.
func (s *Store) TxDue(_ context.Context, now time.Time, limit int) ([]string, error) {
	type due struct {
		id string
		at time.Time
	}
	var (
		ids   []due
		stale [][]byte
	)
	err := s.txView("", func(b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			var r TxRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return nil // reported by TxGet/TxClaim of that ID
			}
			switch {
			case r.State.Final():
				// Retention runs on the store's clock: now may be any time the caller
				// asks about.
				if s.now().Sub(r.Resolved) > s.ttl {
					stale = append(stale, append([]byte(nil), k...))
				}
			case !r.NextCheck.After(now) && !(now.Before(r.LeaseUntil) && s.inProcessLease(r.ID)):
				ids = append(ids, due{r.ID, r.NextCheck})
			}
			return nil
		})
	})
	if errors.Is(err, ErrTxNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(stale) > 0 {
		err := s.txUpdate("outbox", func(b *bolt.Bucket) error {
			for _, k := range stale {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	slices.SortFunc(ids, func(a, b due) int { return a.at.Compare(b.at) })
	out := make([]string, 0, min(limit, len(ids)))
	for _, d := range ids[:min(limit, len(ids))] {
		out = append(out, d.id)
	}
	return out, nil
}
