//go:build e2e

package redisstore

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/dedup/storetest"
)

// TestOutboxConformance runs the outbox suite against the harness Redis.
func TestOutboxConformance(t *testing.T) {
	addr := harnessRedis(t)
	storetest.RunOutbox(t, func(t *testing.T) storetest.OutboxStore {
		return newStore(t, addr, prefix(), func(o *Options) { o.TTL = storetest.TTL })
	})
}

// TestOutboxTwoReplicas: two replicas share the outbox. A prepared record one replica
// claimed and then lost (a pod gone without releasing) is not due for the other while the
// lease lives, and is the other's once it expired; when both checkers claim one due record
// at once, exactly one gets it, so only one publishes it.
func TestOutboxTwoReplicas(t *testing.T) {
	addr := harnessRedis(t)
	p := prefix()
	a, b := open(t, addr, p, nil), open(t, addr, p, nil)
	ctx := context.Background()
	r := dedup.TxRecord{ID: "tx-lost", State: dedup.TxPrepared, Message: []byte("m"), Prepared: time.Now(), NextCheck: time.Now()}
	if _, err := a.TxPrepare(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := a.TxClaim(ctx, r.ID, "a-1", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	_ = a.Close() // the pod is gone; its claim stays until the lease ends
	if ids, err := b.TxDue(ctx, time.Now(), 10); err != nil || len(ids) != 0 {
		t.Fatalf("TxDue on b while a's lease lives = %q, %v; want none", ids, err)
	}
	time.Sleep(2500 * time.Millisecond)
	ids, err := b.TxDue(ctx, time.Now(), 10)
	if err != nil || len(ids) != 1 || ids[0] != r.ID {
		t.Fatalf("TxDue on b after a's lease ended = %q, %v; want [%s]", ids, err, r.ID)
	}
	if c, err := b.TxClaim(ctx, r.ID, "b-1", time.Minute); err != nil || string(c.Message) != "m" {
		t.Fatalf("TxClaim on b = %+v, %v", c, err)
	}

	c := open(t, addr, p, nil)
	for i := range 20 {
		r := dedup.TxRecord{ID: "tx-race-" + string(rune('a'+i)), State: dedup.TxPrepared, Prepared: time.Now(), NextCheck: time.Now()}
		if _, err := b.TxPrepare(ctx, r); err != nil {
			t.Fatal(err)
		}
		var (
			wg  sync.WaitGroup
			mu  sync.Mutex
			won int
		)
		for j, s := range []*Store{b, c} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.TxClaim(ctx, r.ID, s.Owner()+string(rune('0'+j)), time.Minute)
				if err != nil && !errors.Is(err, dedup.ErrTxClaimed) {
					t.Errorf("TxClaim: %v", err)
				}
				if err == nil {
					mu.Lock()
					won++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if won != 1 {
			t.Fatalf("%s: %d replicas won the claim, want 1", r.ID, won)
		}
	}
}
