package dedup

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchID returns a random-looking 32-character ID (like a UUID without dashes), so that
// inserts land all over the B+tree as real message IDs do.
func benchID(prefix string, i int64) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s-%d", prefix, i))
	return hex.EncodeToString(h[:16])
}

// BenchmarkPut measures group-commit throughput: P producers each PutSync one ID at a time
// (like the ack gate's in-flight messages waiting for their record), so a batch is at most
// P records. Reports puts/s and the average batch size.
func BenchmarkPut(b *testing.B) {
	for _, p := range []int{1, 64, 256, 1024} {
		for _, kind := range []string{"random", "sequential"} {
			b.Run(fmt.Sprintf("producers=%d/ids=%s", p, kind), func(b *testing.B) {
				s := openT(b, filepath.Join(b.TempDir(), "bench.db"), Options{TTL: time.Hour})
				ids := make([]string, b.N)
				for i := range ids {
					if kind == "random" {
						ids[i] = benchID(b.Name(), int64(i))
					} else {
						ids[i] = fmt.Sprintf("orders/3/%012d", i)
					}
				}
				var next atomic.Int64
				var wg sync.WaitGroup
				commits := s.Stats().Commits
				b.ResetTimer()
				began := time.Now()
				for range p {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							i := next.Add(1) - 1
							if i >= int64(b.N) {
								return
							}
							if err := s.PutSync(ids[i], Entry{State: Completed, Attempts: 1}); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				took := time.Since(began)
				b.StopTimer()
				st := s.Stats()
				b.ReportMetric(float64(b.N)/took.Seconds(), "puts/s")
				b.ReportMetric(float64(b.N)/float64(max(st.Commits-commits, 1)), "avg_batch")
			})
		}
	}
}

// BenchmarkFdatasync is the baseline the Put figures depend on: one 4 KiB page write plus
// fdatasync in the same directory. A bbolt commit performs two fdatasyncs.
func BenchmarkFdatasync(b *testing.B) {
	f, err := os.CreateTemp(b.TempDir(), "sync")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		if _, err := f.WriteAt(page, int64(i%256)*4096); err != nil {
			b.Fatal(err)
		}
		if err := fdatasync(f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGet measures lookups in a store of 200k random IDs spread over 8 slices (the most
// a store written continuously keeps live): a hit in the newest slice, a hit in the
// oldest, and a miss (which looks into every slice).
func BenchmarkGet(b *testing.B) {
	clk := newFakeClock()
	s := openT(b, filepath.Join(b.TempDir(), "bench.db"), Options{TTL: 8 * time.Hour, Now: clk.Now})
	const perSlice = 200_000 / 8
	var ids [8][]string
	for sl := range 8 {
		if sl > 0 {
			clk.Advance(time.Hour) // next slice
		}
		var wg sync.WaitGroup
		for i := range perSlice {
			id := benchID(fmt.Sprint("slice", sl), int64(i))
			ids[sl] = append(ids[sl], id)
			wg.Add(1)
			s.Put(id, Entry{State: Completed, Attempts: 1}, func(err error) {
				if err != nil {
					b.Error(err)
				}
				wg.Done()
			})
		}
		wg.Wait()
	}
	if st := s.Stats(); st.Slices != 8 {
		b.Fatalf("want 8 slices, have %+v", st)
	}
	missing := make([]string, 100_000)
	for i := range missing {
		missing[i] = benchID("missing", int64(i))
	}
	for _, c := range []struct {
		name string
		ids  []string
		want State
	}{
		{"hit-newest", ids[7], Completed},
		{"hit-oldest", ids[0], Completed},
		{"miss", missing, Unknown},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				r := rand.New(rand.NewPCG(rand.Uint64(), 1))
				for pb.Next() {
					id := c.ids[r.IntN(len(c.ids))]
					e, err := s.Get(id)
					if err != nil || e.State != c.want {
						b.Errorf("Get(%s) = %+v, %v; want %v", id, e, err, c.want)
						return
					}
				}
			})
		})
	}
}
