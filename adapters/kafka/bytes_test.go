package kafka

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
)

// The buffer ahead of the gate is bounded in bytes: with 128 KiB records, a 2 MiB budget
// and every lane full, the adapter stops fetching at the budget, though the record bound
// (perPartitionBuffer) would let it buffer the whole 24 MiB backlog.
func TestBufferBoundedInBytes(t *testing.T) {
	const parts, perPart, size, budget = 8, 24, 128 << 10, 2 << 20
	brokers := newCluster(t)
	createTopic(t, brokers, "bytes", parts)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytes(size+(16<<10)), kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for p := range parts {
		var recs []*kgo.Record
		for range perPart {
			v := make([]byte, size)
			for i := range v {
				v[i] = byte(rng.Uint32())
			}
			recs = append(recs, &kgo.Record{Topic: "bytes", Partition: int32(p), Value: v})
		}
		if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	cl.Close()

	s, err := New(testConfig(brokers, "bytes"), "", WithLogger(testLogger(t)), WithMaxBufferBytes(budget))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	lifecycletest.Start(t, s.Run)
	var mu sync.Mutex
	out := map[string]int{} // lane → handed out, never settled: one per lane fills it
	s.LimitLanes(func(lane string) bool {
		mu.Lock()
		defer mu.Unlock()
		return out[lane] >= 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for n := 0; n < parts; n++ {
		d, err := s.Read(ctx)
		if err != nil {
			t.Fatalf("read %d of %d: %v", n, parts, err)
		}
		mu.Lock()
		out[d.Lane]++
		mu.Unlock()
	}
	// Every lane is full: a Read waits, and the buffer holds the budget plus at most what
	// one fetch response brings (FetchMaxBytes, at least one record batch).
	rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
	if d, err := s.Read(rctx); err == nil {
		t.Fatalf("read %s/%d while every lane is full", d.Lane, d.Offset)
	}
	rcancel()
	s.mu.Lock()
	buffered, records := s.bufBytes, s.buffered
	s.mu.Unlock()
	if bound := int64(budget + (256 << 10) + size); buffered > bound || buffered == 0 {
		t.Fatalf("%d bytes (%d records) buffered, want 1..%d (backlog %d bytes)", buffered, records, bound, parts*perPart*size)
	}
	t.Logf("%d bytes (%d records) of %d buffered while every lane is full", buffered, records, parts*perPart*size)
}
