package dedup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mqsidecar/mqsidecar/internal/testfs"
)

// TestFullDiskPausesAndResumes: on a file system with no room left, commits neither fail
// nor report success: the records wait (no done callback fires, so the gate acknowledges
// nothing and stops admitting once its permits are used), Ready says the disk is full, and
// once space is freed every waiting record is committed and readable, also after a reopen.
func TestFullDiskPausesAndResumes(t *testing.T) {
	defer func(lo, hi time.Duration) { pauseRetryMin, pauseRetryMax = lo, hi }(pauseRetryMin, pauseRetryMax)
	pauseRetryMin, pauseRetryMax = 10*time.Millisecond, 50*time.Millisecond

	dir := testfs.Small(t, 4<<20)
	path := filepath.Join(dir, "dedup.db")
	s := openT(t, path, Options{TTL: time.Hour})
	for i := range 100 {
		if err := s.PutSync(fmt.Sprintf("before-%d", i), Entry{State: Completed, Attempts: 1}); err != nil {
			t.Fatal(err)
		}
	}
	filler := testfs.Fill(t, dir)
	if err := s.Ready(); err != nil {
		t.Fatalf("Ready before any failed commit: %v", err)
	}

	const n = 20000 // about 2 MB of records: far more than the pages bbolt can reuse
	var done, failed atomic.Int64
	errs := make(chan error, n)
	go func() {
		for i := range n {
			s.Put(fmt.Sprintf("during-%06d", i), Entry{State: InFlight, Attempts: 1}, func(err error) {
				done.Add(1)
				if err != nil {
					failed.Add(1)
					errs <- err
				}
			})
		}
	}()

	deadline := time.Now().Add(10 * time.Second)
	for s.Ready() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("Ready still nil with the disk full; %d callbacks, %d failed", done.Load(), failed.Load())
		}
		if failed.Load() > 0 {
			t.Fatalf("a commit failed on the full disk instead of pausing: %v", <-errs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Ready(); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Ready = %v, want ErrDiskFull", err)
	}
	t.Logf("paused: %v", s.Ready())
	time.Sleep(300 * time.Millisecond) // several retries, still no room
	if failed.Load() > 0 {
		t.Fatalf("a record failed while paused: %v", <-errs)
	}
	paused := done.Load()
	if paused >= n {
		t.Fatalf("all %d records reported done on a full disk", n)
	}
	if _, err := s.Get("before-7"); err != nil {
		t.Fatalf("Get while paused: %v", err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for done.Load() < n {
		if time.Now().After(deadline.Add(20 * time.Second)) {
			t.Fatalf("only %d of %d records done after space came back", done.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if failed.Load() > 0 {
		t.Fatalf("%d records failed: %v", failed.Load(), <-errs)
	}
	if err := s.Ready(); err != nil {
		t.Fatalf("Ready after space came back: %v", err)
	}
	t.Logf("%d of %d records were done before the pause; all done after it", paused, n)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The failed transactions left the file consistent: bbolt's own check finds nothing.
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	}); err != nil {
		t.Fatalf("bbolt check after the pause: %v", err)
	}
	_ = db.Close()
	s = openT(t, path, Options{TTL: time.Hour})
	for _, id := range []string{"before-0", "before-99", "during-000000", fmt.Sprintf("during-%06d", n-1)} {
		e, err := s.Get(id)
		if err != nil || e.State == Unknown {
			t.Fatalf("after reopen, %s = %+v, %v", id, e, err)
		}
	}
	if got := s.Stats().Entries; got != 100+n {
		t.Fatalf("after reopen, %d entries, want %d", got, 100+n)
	}
}

// TestFullDiskCloseFailsWhatWaits: Close during a pause does not hang; the records still
// waiting fail with ErrDiskFull (unacknowledged, so the broker redelivers them).
func TestFullDiskCloseFailsWhatWaits(t *testing.T) {
	defer func(lo, hi time.Duration) { pauseRetryMin, pauseRetryMax = lo, hi }(pauseRetryMin, pauseRetryMax)
	pauseRetryMin, pauseRetryMax = 10*time.Millisecond, 50*time.Millisecond

	dir := testfs.Small(t, 2<<20)
	s := openT(t, filepath.Join(dir, "dedup.db"), Options{TTL: time.Hour})
	testfs.Fill(t, dir)
	errs := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			if err := s.PutSync(fmt.Sprintf("id-%06d", i), Entry{State: InFlight, Attempts: 1}); err != nil {
				errs <- err
				return
			}
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for s.Ready() == nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s.Ready() == nil {
		t.Fatal("never paused")
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs on a full disk")
	}
	if err := <-errs; !errors.Is(err, ErrDiskFull) && !errors.Is(err, ErrClosed) {
		t.Fatalf("waiting record failed with %v, want ErrDiskFull", err)
	}
}
