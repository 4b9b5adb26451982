package dedup

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestRecordsSurviveReopenAndExpiredOnesAreSwept: a record written is there after Close
// and Open (the file with the records bucket is a valid schema-1 file), and records past
// their TTL are deleted from the file by the sweeps of later writes.
func TestRecordsSurviveReopenAndExpiredOnesAreSwept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dedup.db")
	now := time.Unix(1_700_000_000, 0)
	opts := Options{TTL: time.Hour, Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	put := func(s *Store, k, v string) {
		if err := s.SwapRecord(ctx, k, func([]byte) ([]byte, bool) { return []byte(v), true }); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100 {
		put(s, fmt.Sprintf("old-%03d", i), "x")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, opts)
	if err != nil {
		t.Fatalf("reopen a file with records: %v", err)
	}
	var got []byte
	_ = s.SwapRecord(ctx, "old-007", func(old []byte) ([]byte, bool) { got = old; return nil, false })
	if string(got) != "x" {
		t.Fatalf("after reopen: %q", got)
	}
	now = now.Add(2 * time.Hour)
	for i := range 4 { // 4 sweeps of 64 keys cover the 100 old ones
		put(s, fmt.Sprintf("new-%d", i), "y")
	}
	count := 0
	if err := s.db.View(func(tx *bolt.Tx) error { count = tx.Bucket(recordsBucket).Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	if count != 4 {
		t.Fatalf("%d records in the file, want the 4 new ones", count)
	}
	_ = s.Close()
}

// TestSwapRecordAnswersAfterItsCommitAndSharesIt: concurrent SwapRecords share commits,
// and none returns before the commit holding its write returned (bbolt's commit fsyncs:
// the store does not set NoSync). The first commit is held until every other write is
// queued, so those are all written by the second: two commits for 32 writes.
func TestSwapRecordAnswersAfterItsCommitAndSharesIt(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "dedup.db"), Options{TTL: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.db.NoSync {
		t.Fatal("the store's commits must fsync")
	}
	const n = 32
	var mu sync.Mutex
	durable := map[string]bool{}
	commits := 0
	release := make(chan struct{})
	s.recs.committed = func(keys [][]byte) {
		mu.Lock()
		commits++
		for _, k := range keys {
			durable[string(k)] = true
		}
		mu.Unlock()
	}
	ctx := context.Background()
	entered := make(chan struct{})
	write := func(key string, hold bool) error {
		calls := 0
		return s.SwapRecord(ctx, key, func([]byte) ([]byte, bool) {
			if calls++; hold && calls == 2 { // the first call reads; the second is in the commit
				close(entered)
				<-release
			}
			return []byte("v-" + key), true
		})
	}
	errs := make(chan error, n)
	go func() { errs <- write("first", true) }()
	<-entered
	var wg sync.WaitGroup
	for i := range n - 1 {
		wg.Go(func() {
			key := fmt.Sprintf("k-%02d", i)
			err := write(key, false)
			mu.Lock()
			ok := durable[key]
			mu.Unlock()
			if err == nil && !ok {
				err = fmt.Errorf("SwapRecord of %s returned before its commit", key)
			}
			errs <- err
		})
	}
	for s.waitingRecords() < n-1 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if commits != 2 {
		t.Fatalf("%d commits for %d concurrent writes, want 2 (the held one, then all the others)", commits, n)
	}
	for i := range n - 1 {
		var got []byte
		key := fmt.Sprintf("k-%02d", i)
		_ = s.SwapRecord(ctx, key, func(old []byte) ([]byte, bool) { got = old; return nil, false })
		if string(got) != "v-"+key {
			t.Fatalf("%s reads %q", key, got)
		}
	}
}

// waitingRecords is the number of writes waiting for the next commit (tests).
func (s *Store) waitingRecords() int {
	s.recs.mu.Lock()
	defer s.recs.mu.Unlock()
	return len(s.recs.waiting)
}
