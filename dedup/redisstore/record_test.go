package redisstore

import (
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
)

func TestRecordRoundTrip(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_123)
	for _, e := range []dedup.Entry{
		{State: dedup.InFlight, Attempts: 3, NextAttempt: now.Add(time.Minute)},
		{State: dedup.Completed, Attempts: 1},
	} {
		r := newRecord(e, "host-1-abc", now, 30*time.Second)
		raw := r.encode()
		got, err := decodeRecord(raw)
		if err != nil {
			t.Fatalf("decode(%q): %v", raw, err)
		}
		if got != r {
			t.Fatalf("round trip: %+v, want %+v", got, r)
		}
		ge := got.entry("host-1-abc", now)
		if ge.State != e.State || ge.Attempts != e.Attempts || !ge.NextAttempt.Equal(e.NextAttempt) || !ge.Updated.Equal(now) || ge.Elsewhere {
			t.Fatalf("entry: %+v from %+v", ge, e)
		}
		if e.State == dedup.Completed && len(raw) > 20 {
			t.Errorf("a Completed record takes %d bytes", len(raw))
		}
	}
	r := newRecord(dedup.Entry{State: dedup.InFlight, Attempts: 1}, "other", now, time.Second)
	if !r.entry("me", now.Add(999*time.Millisecond)).Elsewhere {
		t.Error("another owner's live lease is not Elsewhere")
	}
	if r.entry("me", now.Add(time.Second)).Elsewhere {
		t.Error("an expired lease is still Elsewhere")
	}
	if r.entry("other", now).Elsewhere {
		t.Error("the owner's own record is Elsewhere")
	}
	if r := newRecord(dedup.Entry{State: dedup.InFlight, Released: true}, "other", now, time.Second); r.entry("me", now).Elsewhere || r.leaseUntil != 0 {
		t.Errorf("a released record holds a lease: %+v", r)
	}
	if r := newRecord(dedup.Entry{State: dedup.Completed}, "me", now, time.Second); r.owner != "" || r.leaseUntil != 0 {
		t.Errorf("a Completed record carries an owner or lease: %+v", r)
	}
	for _, bad := range []string{"x", "\xa1", "\xa1\x00\x01", "\xa1\x03\x01", "\xa1\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "hello"} {
		if _, err := decodeRecord(bad); err == nil {
			t.Errorf("decode(%q) accepted", bad)
		}
	}
	if r, err := decodeRecord(""); err != nil || r.state != dedup.Unknown {
		t.Errorf("decode of no value: %+v, %v", r, err)
	}
}

func TestKeyIsHashTagged(t *testing.T) {
	s := &Store{opts: Options{KeyPrefix: "mqsidecar:kafka:orders:"}}
	if k := s.key("orders/3/42"); k != "mqsidecar:kafka:orders:{orders/3/42}" {
		t.Fatalf("key = %q", k)
	}
}
