package ackgate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/internal/testfs"
)

// TestFullDiskPausesTheGate: when the dedup store's disk fills up, the gate does not stop
// (no ErrStore, no exit into a crash loop): admission stops once the permits are used,
// nothing is acknowledged that the store has not recorded, and when space is freed every
// message is delivered and acknowledged once, its completion on disk.
func TestFullDiskPausesTheGate(t *testing.T) {
	dir := testfs.Small(t, 4<<20)
	st, err := dedup.Open(filepath.Join(dir, "dedup.db"), dedup.Options{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	go func() { _ = st.Run(t.Context()) }() // the deferred Close ends it
	filler := testfs.Fill(t, dir)

	_, url := newApp(t, nil)
	src := newFakeSource()
	o := opts(url)
	o.MaxInflight = 4
	o.Ordering = OrderNone
	g := New(src, st, o)
	runErr := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { runErr <- g.Run(ctx) }()

	const n = 4000
	id := func(i int) string { return fmt.Sprintf("order-%s-%06d", strings.Repeat("x", 40), i) }
	for i := range n {
		src.send(id(i), "", "")
	}
	waitFor(t, "the store to pause", func() bool { return st.Ready() != nil })
	if err := st.Ready(); !errors.Is(err, dedup.ErrDiskFull) {
		t.Fatalf("store Ready = %v", err)
	}
	time.Sleep(300 * time.Millisecond) // let what is in flight settle as far as it can
	settled, reads := src.settledCount(), src.reads.Load()
	time.Sleep(700 * time.Millisecond)
	select {
	case err := <-runErr:
		t.Fatalf("the gate stopped on a full disk: %v", err)
	default:
	}
	if got := src.settledCount(); got != settled {
		t.Fatalf("%d settlements while paused (was %d)", got-settled, settled)
	}
	if got := src.reads.Load(); got != reads || got >= n {
		t.Fatalf("admission went on while paused: %d reads, then %d, of %d", reads, got, n)
	}
	t.Logf("paused after %d of %d reads, %d settled", reads, n, settled)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for src.settledCount() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d settled after space came back", src.settledCount(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := st.Ready(); err != nil {
		t.Fatalf("store still not ready: %v", err)
	}
	for i := range n {
		if r := src.results(id(i)); len(r) != 1 || r[0] != nil {
			t.Fatalf("%s settled %v, want once, acknowledged", id(i), r)
		}
		if e, err := st.Get(id(i)); err != nil || e.State != dedup.Completed {
			t.Fatalf("%s acknowledged but recorded as %v (%v)", id(i), e.State, err)
		}
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
