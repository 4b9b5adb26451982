package dedup

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

// TestOutboxSurvivesReopen: a prepared record and its claim are on disk when TxClaim
// returns; the next process (a reopen without Close of the outbox's holder) sees the
// record and takes over the dead holder's live lease at once, and the dedup file with an
// outbox bucket opens as a valid store.
func TestOutboxSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dedup.db")
	opts := Options{TTL: time.Hour, Logger: slog.New(slog.DiscardHandler)}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r := TxRecord{ID: "tx-1", State: TxPrepared, Message: []byte("m"), Prepared: time.Now(), NextCheck: time.Now()}
	if _, err := s.TxPrepare(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TxClaim(ctx, r.ID, "dead", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, opts)
	if err != nil {
		t.Fatalf("reopen with an outbox bucket: %v", err)
	}
	defer s.Close()
	ids, err := s.TxDue(ctx, time.Now(), 10)
	if err != nil || len(ids) != 1 || ids[0] != r.ID {
		t.Fatalf("TxDue after reopen = %q, %v; want [%s] (the dead process's lease does not hold)", ids, err, r.ID)
	}
	c, err := s.TxClaim(ctx, r.ID, "new", time.Minute)
	if err != nil || c.Owner != "new" || string(c.Message) != "m" {
		t.Fatalf("TxClaim after reopen = %+v, %v", c, err)
	}
}
