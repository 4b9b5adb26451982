//go:build e2e

package redisstore

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/dedup"
)

// BenchmarkGateCycle measures what the ack gate asks of the store per message against the
// harness Redis: an Update (check-and-mark in flight) and, once it is done, a Put
// (completed), with 256 messages outstanding (the gate's admission bound for max_inflight
// 64). It reports messages per second (each message is two requests) and the requests per
// pipelined batch (a batch of Puts is one round trip, one with Updates two).
func BenchmarkGateCycle(b *testing.B) {
	addr := harnessRedis(b)
	var batches, requests atomic.Int64
	s := open(b, addr, prefix(), func(o *Options) {
		o.OnCommit = func(n int, _ time.Duration) { batches.Add(1); requests.Add(int64(n)) }
	})
	const outstanding = 256
	sem := make(chan struct{}, outstanding)
	var wg sync.WaitGroup
	b.ResetTimer()
	began := time.Now()
	for i := range b.N {
		sem <- struct{}{}
		wg.Add(1)
		id := "bench-" + strconv.Itoa(i)
		s.Update(id, func(p dedup.Entry) (dedup.Entry, bool) {
			return dedup.Entry{State: dedup.InFlight, Attempts: p.Attempts + 1}, true
		}, func(_ dedup.Entry, err error) {
			if err != nil {
				b.Error(err)
			}
			go s.Put(id, dedup.Entry{State: dedup.Completed, Attempts: 1}, func(err error) {
				if err != nil {
					b.Error(err)
				}
				<-sem
				wg.Done()
			})
		})
	}
	wg.Wait()
	el := time.Since(began)
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
	b.ReportMetric(float64(requests.Load())/float64(max(batches.Load(), 1)), "reqs/batch")
}
