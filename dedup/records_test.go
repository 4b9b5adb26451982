package dedup

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
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
