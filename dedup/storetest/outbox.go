package storetest

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
)

// OutboxStore is what the outbox suite exercises.
type OutboxStore interface {
	dedup.Outbox
	Close() error
	Run(ctx context.Context) error
}

// RunOutbox is the conformance suite of the outbox (dedup.Outbox): a prepare is stored
// once (a second one answers the first record), claims are exclusive while their lease
// lives and pass on once it expired, only the lease holder writes, a final state drops the
// message and keeps the decision, and TxDue lists the unresolved records that are due and
// not held. open returns a new store, not yet running, as for Run.
func RunOutbox(t *testing.T, open func(t *testing.T) OutboxStore) {
	runEach(t, open, []suiteCase[OutboxStore]{
		{"PrepareOnce", prepareOnce},
		{"ClaimExclusive", claimExclusive},
		{"LeaseExpiry", leaseExpiry},
		{"FinalKeepsDecision", finalKeepsDecision},
		{"Due", dueList},
		{"ConcurrentClaims", concurrentClaims},
	})
}

func prepared(t *testing.T, s OutboxStore, what string, next time.Time) dedup.TxRecord {
	t.Helper()
	r := dedup.TxRecord{ID: newID(t, what), State: dedup.TxPrepared, Message: []byte("m-" + what),
		Prepared: time.Now().Truncate(time.Millisecond), NextCheck: next.Truncate(time.Millisecond)}
	if _, err := s.TxPrepare(context.Background(), r); err != nil {
		t.Fatalf("TxPrepare(%q): %v", r.ID, err)
	}
	return r
}

func txGet(t *testing.T, s OutboxStore, id string) dedup.TxRecord {
	t.Helper()
	r, err := s.TxGet(context.Background(), id)
	if err != nil {
		t.Fatalf("TxGet(%q): %v", id, err)
	}
	return r
}

func prepareOnce(t *testing.T, s OutboxStore) {
	ctx := context.Background()
	if _, err := s.TxGet(ctx, newID(t, "none")); !errors.Is(err, dedup.ErrTxNotFound) {
		t.Fatalf("TxGet of an unknown ID: %v, want ErrTxNotFound", err)
	}
	if _, err := s.TxClaim(ctx, newID(t, "none"), "a", time.Second); !errors.Is(err, dedup.ErrTxNotFound) {
		t.Fatalf("TxClaim of an unknown ID: %v, want ErrTxNotFound", err)
	}
	r := prepared(t, s, "p", time.Now().Add(time.Minute))
	got := txGet(t, s, r.ID)
	if got.State != dedup.TxPrepared || string(got.Message) != string(r.Message) ||
		!got.Prepared.Equal(r.Prepared) || !got.NextCheck.Equal(r.NextCheck) {
		t.Fatalf("TxGet after TxPrepare = %+v, want %+v", got, r)
	}
	again := r
	again.Message = []byte("other")
	old, err := s.TxPrepare(ctx, again)
	if !errors.Is(err, dedup.ErrTxExists) {
		t.Fatalf("second TxPrepare of %q: %v, want ErrTxExists", r.ID, err)
	}
	if string(old.Message) != string(r.Message) {
		t.Fatalf("second TxPrepare returned message %q, want the first %q", old.Message, r.Message)
	}
	if got := txGet(t, s, r.ID); string(got.Message) != string(r.Message) {
		t.Fatalf("second TxPrepare overwrote the message: %q", got.Message)
	}
}

func claimExclusive(t *testing.T, s OutboxStore) {
	ctx := context.Background()
	r := prepared(t, s, "c", time.Now())
	c, err := s.TxClaim(ctx, r.ID, "a", time.Minute)
	if err != nil || c.Owner != "a" || c.State != dedup.TxPrepared {
		t.Fatalf("TxClaim by a = %+v, %v", c, err)
	}
	if _, err := s.TxClaim(ctx, r.ID, "b", time.Minute); !errors.Is(err, dedup.ErrTxClaimed) {
		t.Fatalf("TxClaim by b while a holds it: %v, want ErrTxClaimed", err)
	}
	c.State = dedup.TxCommitting
	if err := s.TxUpdate(ctx, "b", c); !errors.Is(err, dedup.ErrTxClaimed) {
		t.Fatalf("TxUpdate by b, who holds no lease: %v, want ErrTxClaimed", err)
	}
	c.NextCheck = time.Now().Add(time.Hour).Truncate(time.Millisecond)
	c.Checks = 2
	if err := s.TxUpdate(ctx, "a", c); err != nil {
		t.Fatalf("TxUpdate by a: %v", err)
	}
	got := txGet(t, s, r.ID)
	if got.State != dedup.TxCommitting || got.Checks != 2 || !got.NextCheck.Equal(c.NextCheck) || string(got.Message) != string(r.Message) {
		t.Fatalf("after TxUpdate to committing: %+v", got)
	}
	// TxUpdate ended a's lease: b claims at once.
	if c, err := s.TxClaim(ctx, r.ID, "b", time.Minute); err != nil || c.Owner != "b" || c.State != dedup.TxCommitting {
		t.Fatalf("TxClaim by b after a's update = %+v, %v", c, err)
	}
}

func leaseExpiry(t *testing.T, s OutboxStore) {
	ctx := context.Background()
	r := prepared(t, s, "l", time.Now())
	if _, err := s.TxClaim(ctx, r.ID, "a", 300*time.Millisecond); err != nil {
		t.Fatalf("TxClaim by a: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	c, err := s.TxClaim(ctx, r.ID, "b", time.Minute)
	if err != nil || c.Owner != "b" {
		t.Fatalf("TxClaim by b after a's lease expired = %+v, %v", c, err)
	}
	c.State = dedup.TxCommitted
	if err := s.TxUpdate(ctx, "a", c); !errors.Is(err, dedup.ErrTxClaimed) {
		t.Fatalf("TxUpdate by a after losing the lease: %v, want ErrTxClaimed", err)
	}
	if got := txGet(t, s, r.ID); got.State != dedup.TxPrepared {
		t.Fatalf("a's late update was written: %+v", got)
	}
}

func finalKeepsDecision(t *testing.T, s OutboxStore) {
	ctx := context.Background()
	for _, st := range []dedup.TxState{dedup.TxCommitted, dedup.TxRolledBack} {
		r := prepared(t, s, "f", time.Now())
		c, err := s.TxClaim(ctx, r.ID, "a", time.Minute)
		if err != nil {
			t.Fatalf("TxClaim: %v", err)
		}
		c.State = st
		if st == dedup.TxCommitted {
			c.Receipt = []byte(`{"offset":7}`)
		}
		if err := s.TxUpdate(ctx, "a", c); err != nil {
			t.Fatalf("TxUpdate to %s: %v", st, err)
		}
		got := txGet(t, s, r.ID)
		if got.State != st || len(got.Message) != 0 || string(got.Receipt) != string(c.Receipt) || got.Resolved.IsZero() {
			t.Fatalf("after TxUpdate to %s: %+v (want the message dropped, the receipt kept, Resolved set)", st, got)
		}
		// A final record is not claimed: it is returned as it is.
		again, err := s.TxClaim(ctx, r.ID, "b", time.Minute)
		if err != nil || again.State != st || again.Owner != "" {
			t.Fatalf("TxClaim of a %s record = %+v, %v", st, again, err)
		}
		if _, err := s.TxPrepare(ctx, r); !errors.Is(err, dedup.ErrTxExists) {
			t.Fatalf("TxPrepare of a %s ID: %v, want ErrTxExists", st, err)
		}
	}
}

func dueList(t *testing.T, s OutboxStore) {
	ctx := context.Background()
	now := time.Now()
	early := prepared(t, s, "d1", now.Add(-2*time.Second))
	late := prepared(t, s, "d2", now.Add(-time.Second))
	future := prepared(t, s, "d3", now.Add(time.Hour))
	held := prepared(t, s, "d4", now.Add(-3*time.Second))
	done := prepared(t, s, "d5", now.Add(-4*time.Second))
	if _, err := s.TxClaim(ctx, held.ID, "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	c, err := s.TxClaim(ctx, done.ID, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c.State = dedup.TxRolledBack
	if err := s.TxUpdate(ctx, "a", c); err != nil {
		t.Fatal(err)
	}
	ours := func(limit int) []string {
		ids, err := s.TxDue(ctx, time.Now(), limit)
		if err != nil {
			t.Fatalf("TxDue: %v", err)
		}
		var out []string
		for _, id := range ids {
			switch id {
			case early.ID, late.ID, future.ID, held.ID, done.ID:
				out = append(out, id)
			}
		}
		return out
	}
	if got := ours(100); len(got) != 2 || got[0] != early.ID || got[1] != late.ID {
		t.Fatalf("TxDue = %q, want [%s %s] (due, oldest first; not the future, held or final ones)", got, early.ID, late.ID)
	}
	// Asking about the far future lists the future one too, and forgets no decision.
	far, err := s.TxDue(ctx, time.Now().Add(100*365*24*time.Hour), 1000)
	if err != nil || !slices.Contains(far, future.ID) {
		t.Fatalf("TxDue in 100 years = %q, %v; want %s among them", far, err, future.ID)
	}
	if got := txGet(t, s, done.ID); got.State != dedup.TxRolledBack {
		t.Fatalf("the rolled back record after TxDue in 100 years: %+v", got)
	}
	// Rescheduled into the future: no longer due.
	c, err = s.TxClaim(ctx, early.ID, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c.NextCheck = time.Now().Add(time.Hour)
	if err := s.TxUpdate(ctx, "a", c); err != nil {
		t.Fatal(err)
	}
	if got := ours(100); len(got) != 1 || got[0] != late.ID {
		t.Fatalf("TxDue after rescheduling %s = %q, want [%s]", early.ID, got, late.ID)
	}
}

func concurrentClaims(t *testing.T, s OutboxStore) {
	r := prepared(t, s, "cc", time.Now())
	const n = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		won     int
		claimed int
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.TxClaim(context.Background(), r.ID, string(rune('a'+i)), time.Minute)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won++
			case errors.Is(err, dedup.ErrTxClaimed):
				claimed++
			default:
				t.Errorf("TxClaim: %v", err)
			}
		}()
	}
	wg.Wait()
	if won != 1 || claimed != n-1 {
		t.Fatalf("%d concurrent claims: %d won, %d refused; want 1 and %d", n, won, claimed, n-1)
	}
}
