package redisstore

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
)

// recordVersion starts every stored value; a value that starts otherwise is not ours.
const recordVersion = 0xA1

// record is what one key holds. Times are Unix milliseconds of the writer's wall clock
// (0 = none). Owner and LeaseUntil are set only for InFlight records.
type record struct {
	state       dedup.State
	attempts    int
	nextAttempt int64
	updated     int64
	leaseUntil  int64
	owner       string
}

// encode is compact: version, state, then varints, then the owner's bytes; about 20 bytes
// for a Completed record, 40 for an InFlight one.
func (r record) encode() string {
	b := make([]byte, 0, 2+4*binary.MaxVarintLen64+len(r.owner))
	b = append(b, recordVersion, byte(r.state))
	b = binary.AppendUvarint(b, uint64(r.attempts))
	b = binary.AppendVarint(b, r.nextAttempt)
	b = binary.AppendVarint(b, r.updated)
	b = binary.AppendVarint(b, r.leaseUntil)
	b = append(b, r.owner...)
	return string(b)
}

var errBadRecord = errors.New("not an mqsidecar dedup record")

// decodeRecord decodes raw; "" (no key) is the zero record (Unknown).
func decodeRecord(raw string) (record, error) {
	if raw == "" {
		return record{}, nil
	}
	b := []byte(raw)
	if len(b) < 2 || b[0] != recordVersion || dedup.State(b[1]) == dedup.Unknown || dedup.State(b[1]) > dedup.Completed {
		return record{}, errBadRecord
	}
	r := record{state: dedup.State(b[1])}
	b = b[2:]
	a, n := binary.Uvarint(b)
	if n <= 0 || a > 1<<31 {
		return record{}, errBadRecord
	}
	r.attempts = int(a)
	b = b[n:]
	for _, dst := range []*int64{&r.nextAttempt, &r.updated, &r.leaseUntil} {
		v, n := binary.Varint(b)
		if n <= 0 {
			return record{}, errBadRecord
		}
		*dst = v
		b = b[n:]
	}
	r.owner = string(b)
	return r, nil
}

// entry is the record as the gate sees it from owner self at time now.
func (r record) entry(self string, now time.Time) dedup.Entry {
	if r.state == dedup.Unknown {
		return dedup.Entry{}
	}
	e := dedup.Entry{State: r.state, Attempts: r.attempts}
	if r.nextAttempt != 0 {
		e.NextAttempt = time.UnixMilli(r.nextAttempt)
	}
	if r.updated != 0 {
		e.Updated = time.UnixMilli(r.updated)
	}
	e.Elsewhere = r.state == dedup.InFlight && r.owner != self && now.UnixMilli() < r.leaseUntil
	return e
}

// newRecord is what a write of e by owner self at time now stores. An InFlight record is
// stamped with the owner and a lease, except when e.Released: then it keeps the owner (for
// inspection) but no lease, so no replica sees it Elsewhere.
func newRecord(e dedup.Entry, self string, now time.Time, lease time.Duration) record {
	r := record{state: e.State, attempts: e.Attempts, updated: now.UnixMilli()}
	if !e.NextAttempt.IsZero() {
		r.nextAttempt = e.NextAttempt.UnixMilli()
	}
	if e.State == dedup.InFlight {
		r.owner = self
		if !e.Released {
			r.leaseUntil = now.Add(lease).UnixMilli()
		}
	}
	return r
}
