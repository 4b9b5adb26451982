package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
)

// RecordStore is a store's records key space (package dedup, records.go), which the
// publish endpoint keeps its idempotency keys in.
type RecordStore interface {
	SwapRecord(ctx context.Context, key string, f func(old []byte) (next []byte, write bool)) error
	Close() error
	Run(ctx context.Context) error
}

// RunRecords runs the records cases against stores from open (new, not running, with a
// TTL of TTL, as for Run): absent reads nil, a write reads back, write=false leaves the
// record, nil deletes it, records expire TTL after their last write, concurrent swaps of
// one key never lose an update, and after Close a swap fails with dedup.ErrClosed.
func RunRecords(t *testing.T, open func(t *testing.T) RecordStore) {
	start := func(t *testing.T) RecordStore {
		s := open(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done; _ = s.Close() })
		return s
	}
	ctx := context.Background()
	read := func(t *testing.T, s RecordStore, key string) []byte {
		t.Helper()
		var got []byte
		if err := s.SwapRecord(ctx, key, func(old []byte) ([]byte, bool) { got = old; return nil, false }); err != nil {
			t.Fatalf("read %s: %v", key, err)
		}
		return got
	}
	write := func(t *testing.T, s RecordStore, key string, v []byte) {
		t.Helper()
		if err := s.SwapRecord(ctx, key, func([]byte) ([]byte, bool) { return v, true }); err != nil {
			t.Fatalf("write %s: %v", key, err)
		}
	}
	t.Run("Semantics", func(t *testing.T) {
		s := start(t)
		key := uniqueKey("sem")
		if got := read(t, s, key); got != nil {
			t.Fatalf("absent key read %q", got)
		}
		write(t, s, key, []byte("one"))
		if got := read(t, s, key); string(got) != "one" {
			t.Fatalf("read %q, want one", got)
		}
		_ = s.SwapRecord(ctx, key, func([]byte) ([]byte, bool) { return []byte("ignored"), false })
		if got := read(t, s, key); string(got) != "one" {
			t.Fatalf("write=false changed the record to %q", got)
		}
		write(t, s, key, nil)
		if got := read(t, s, key); got != nil {
			t.Fatalf("deleted record reads %q", got)
		}
	})
	t.Run("TTLExpiry", func(t *testing.T) {
		s := start(t)
		key := uniqueKey("ttl")
		write(t, s, key, []byte("v"))
		time.Sleep(TTL / 2)
		write(t, s, key, []byte("v2")) // a write renews the record
		time.Sleep(TTL/2 + TTL/4)
		if got := read(t, s, key); string(got) != "v2" {
			t.Fatalf("record gone %s after its last write: %q", TTL*3/4, got)
		}
		time.Sleep(TTL/2 + 500*time.Millisecond)
		if got := read(t, s, key); got != nil {
			t.Fatalf("record still there after its TTL: %q", got)
		}
	})
	t.Run("ConcurrentSwapsLoseNothing", func(t *testing.T) {
		s := start(t)
		key := uniqueKey("inc")
		const n = 40
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				errs <- s.SwapRecord(ctx, key, func(old []byte) ([]byte, bool) {
					c, _ := strconv.Atoi(string(old))
					return []byte(strconv.Itoa(c + 1)), true
				})
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := read(t, s, key); string(got) != strconv.Itoa(n) {
			t.Fatalf("after %d increments the record is %q", n, got)
		}
	})
	t.Run("CloseThenErrClosed", func(t *testing.T) {
		s := start(t)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		err := s.SwapRecord(ctx, uniqueKey("closed"), func([]byte) ([]byte, bool) { return []byte("x"), true })
		if !errors.Is(err, dedup.ErrClosed) {
			t.Fatalf("after Close: %v, want ErrClosed", err)
		}
	})
}

var keySeq struct {
	sync.Mutex
	n int
}

func uniqueKey(prefix string) string {
	keySeq.Lock()
	defer keySeq.Unlock()
	keySeq.n++
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano(), keySeq.n)
}
