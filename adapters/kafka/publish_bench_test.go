//go:build unix

package kafka

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/mqsidecar/mqsidecar/adapters"
)

// BenchmarkPublish: 16 goroutines publish 1 KiB messages through one Publisher on kfake,
// each waiting for its receipt (the publish endpoint's load, without HTTP). Reported beside
// the time and allocations per publish: produce requests per publish (how well concurrent
// publishes share produce requests) and the process's CPU per publish (the publisher's
// and kfake's).
func BenchmarkPublish(b *testing.B) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(8, "bench"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	cfg := Defaults()
	cfg.Brokers = c.ListenAddrs()
	p, err := NewPublisher(cfg, 10*time.Second, WithPublisherLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	m := adapters.OutMessage{Topic: "bench", ID: "id", ContentType: "application/octet-stream", Payload: bytes.Repeat([]byte{'p'}, 1024),
		Headers: []adapters.Header{{Key: "ce-type", Value: "bench"}}}
	if _, err := p.Publish(ctx, m); err != nil { // the producer ID, the topic's metadata
		b.Fatal(err)
	}
	const clients = 16
	var next atomic.Int64
	writes := p.writes.Load()
	cpu0 := processCPU()
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if _, err := p.Publish(ctx, m); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(p.writes.Load()-writes)/float64(b.N), "produce-requests/op")
}

// processCPU is the CPU time (user and system) this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
