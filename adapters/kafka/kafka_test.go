package kafka

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/adapters/adaptertest"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
	"github.com/mqsidecar/mqsidecar/metrics"
)

func newCluster(t *testing.T) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// TestConformanceKfake runs the shared adapter suite on the in-process fake; the same suite
// runs against a real Kafka in TestConformanceE2E.
func TestConformanceKfake(t *testing.T) {
	adaptertest.Run(t, harness(newCluster(t)))
}

func TestMessageIDRules(t *testing.T) {
	r := &kgo.Record{Topic: "t", Partition: 2, Offset: 7, Key: []byte("k"), Headers: []kgo.RecordHeader{{Key: "id", Value: []byte("h1")}}}
	ps := &partState{lane: "t/2", source: "kafka://t"}
	for rule, want := range map[string]string{"": "t/2/7", "key": "k", "header:id": "h1", "header:other": "t/2/7"} {
		if got := (&Source{cfg: Settings{MessageID: rule}}).delivery(r, ps).ID; got != want {
			t.Errorf("rule %q: %q, want %q", rule, got, want)
		}
	}
	if got := (&Source{cfg: Settings{MessageID: "key"}}).delivery(&kgo.Record{Topic: "t", Offset: 1}, ps).ID; got != "t/0/1" {
		t.Errorf("empty key falls back to coordinates, got %q", got)
	}
}

// TestDeliveryIDFollowsTheRules: the Delivery carries the ID of each rule — the first
// header of the name with a value, the key, else the coordinates — taken from the header or
// key string it already holds.
func TestDeliveryIDFollowsTheRules(t *testing.T) {
	r := &kgo.Record{Topic: "t", Partition: 2, Offset: 7, Key: []byte("k"), Headers: []kgo.RecordHeader{
		{Key: "id", Value: nil}, {Key: "Content-Type", Value: []byte("text/plain")}, {Key: "id", Value: []byte("h2")}, {Key: "id", Value: []byte("h3")}}}
	noKey := &kgo.Record{Topic: "t", Offset: 1}
	ps := &partState{lane: "t/2", source: "kafka://t"}
	wants := map[*kgo.Record]map[string]string{
		r:     {"": "t/2/7", "key": "k", "header:id": "h2", "header:other": "t/2/7", "header:Content-Type": "text/plain"},
		noKey: {"": "t/0/1", "key": "t/0/1", "header:id": "t/0/1", "header:other": "t/0/1", "header:Content-Type": "t/0/1"},
	}
	for rec, byRule := range wants {
		for rule, want := range byRule {
			s := &Source{cfg: Settings{MessageID: rule}}
			if d := s.delivery(rec, ps); d.ID != want {
				t.Errorf("rule %q, record %v: ID %q, want %q", rule, rec.Headers, d.ID, want)
			}
		}
	}
	d := (&Source{cfg: Settings{MessageID: "header:id"}}).delivery(r, ps)
	if d.ID != "h2" || d.ContentType != "text/plain" || d.Source != "kafka://t" || d.Lane != "t/2" || d.Key != "k" || len(d.Headers) != 4 {
		t.Fatalf("delivery %+v", d)
	}
}

// TestDeliveryAllocations: a record with a key, an ID header and a content type costs the
// Delivery, its headers and the strings it holds once each (the source, the ID and the
// content type were allocated again per message).
func TestDeliveryAllocations(t *testing.T) {
	r := &kgo.Record{Topic: "orders", Key: []byte("customer-7"), Value: []byte("{}"), Headers: []kgo.RecordHeader{
		{Key: "message-id", Value: []byte("m-1")}, {Key: "content-type", Value: []byte("application/json")}}}
	s := &Source{cfg: Settings{MessageID: "header:message-id"}}
	ps := &partState{lane: "orders/0", source: "kafka://orders"}
	// The Delivery, the key, the headers slice and the two header values.
	if n := testing.AllocsPerRun(100, func() { _ = s.delivery(r, ps) }); n > 5 {
		t.Fatalf("%v allocations per delivery, want at most 5", n)
	}
}

// committed returns the group's committed offset for topic partition 0..n-1.
func committed(t *testing.T, brokers []string, group, topic string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	offs, err := kadm.NewClient(cl).FetchOffsets(context.Background(), group)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int32]int64{}
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic {
			out[o.Partition] = o.At
		}
	})
	return out
}

func produceN(t *testing.T, brokers []string, topic string, partitions, perPartition int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for p := 0; p < partitions; p++ {
		for i := 0; i < perPartition; i++ {
			id := fmt.Sprintf("p%d-%d", p, i)
			recs = append(recs, &kgo.Record{Topic: topic, Partition: int32(p), Value: []byte(id), Headers: []kgo.RecordHeader{{Key: "message-id", Value: []byte(id)}}})
		}
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func createTopic(t *testing.T, brokers []string, topic string, partitions int32) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	resp, err := kadm.NewClient(cl).CreateTopics(context.Background(), partitions, 1, nil, topic)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
}

func readN(t *testing.T, s *Source, n int) []*adapters.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make([]*adapters.Delivery, 0, n)
	for len(out) < n {
		d, err := s.Read(ctx)
		if err != nil {
			t.Fatalf("read %d/%d: %v", len(out), n, err)
		}
		out = append(out, d)
	}
	return out
}

// keepReading reads from s in the background, leaving what it reads unsettled, until the
// test ends: a member that stops reading cannot take part in a rebalance.
func keepReading(t *testing.T, s *Source) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for ctx.Err() == nil {
			if _, err := s.Read(ctx); err != nil {
				return
			}
		}
	}()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCommitsOnlyTheContiguousPrefix settles out of order and checks the committed offset
// never passes an unsettled record.
func TestCommitsOnlyTheContiguousPrefix(t *testing.T) {
	brokers := newCluster(t)
	createTopic(t, brokers, "prefix", 1)
	produceN(t, brokers, "prefix", 1, 10)
	s, err := New(testConfig(brokers, "prefix"), "", WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	defer s.Close(context.Background())
	ds := readN(t, s, 10)
	for _, i := range []int{0, 1, 2, 4, 5, 6} { // 3 is still in flight
		ds[i].Settle(nil)
	}
	waitFor(t, "commit of offset 3", func() bool { return committed(t, brokers, "g-prefix", "prefix")[0] == 3 })
	time.Sleep(300 * time.Millisecond) // several commit intervals: it must stay at 3
	if got := committed(t, brokers, "g-prefix", "prefix")[0]; got != 3 {
		t.Fatalf("committed %d past the unsettled offset 3", got)
	}
	ds[3].Settle(nil)
	waitFor(t, "commit of offset 7", func() bool { return committed(t, brokers, "g-prefix", "prefix")[0] == 7 })
	ds[7].Settle(adapters.ErrNotDone)
	ds[8].Settle(nil)
	ds[9].Settle(nil)
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := committed(t, brokers, "g-prefix", "prefix")[0]; got != 7 {
		t.Fatalf("after close committed %d, want 7 (offset 7 was not done)", got)
	}
}

// TestRevokedPartitionsAreFenced: records handed out before a rebalance that settle after
// their partition moved to another member must not be committed by the old owner.
func TestRevokedPartitionsAreFenced(t *testing.T) {
	brokers := newCluster(t)
	createTopic(t, brokers, "fence", 2)
	produceN(t, brokers, "fence", 2, 5)
	cfg := testConfig(brokers, "fence")
	a, err := New(cfg, "", WithLogger(testLogger(t)), WithClientOptions(fastGroup...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, a.Run)
	defer a.Close(context.Background())
	held := readN(t, a, 10) // a owns both partitions and holds every record unsettled

	b, err := New(cfg, "", WithLogger(testLogger(t)), WithClientOptions(fastGroup...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, b.Run)
	defer b.Close(context.Background())
	// b joining revokes one partition from a: a waits revokeWait for its in-flight records,
	// then gives the partition up; b must then receive that partition's records again.
	keepReading(t, a) // so that it takes part in the rebalance
	got := readN(t, b, 5)
	moved := got[0].Partition
	for _, d := range held {
		// The revoke fenced the moved partition's deliveries at once, and only those.
		if d.IsFenced() != (d.Partition == moved) {
			t.Fatalf("partition %d offset %d: fenced %v after partition %d moved", d.Partition, d.Offset, d.IsFenced(), moved)
		}
	}
	for _, d := range got {
		// a handed these out: the new owner must flag them (a had reserved past them).
		if !d.Redelivered {
			t.Fatalf("new owner got %d/%d unflagged; the old owner had handed it out", d.Partition, d.Offset)
		}
	}
	for _, d := range held {
		d.Settle(nil) // late: the moved partition's settlements must be ignored
	}
	time.Sleep(500 * time.Millisecond) // several commit intervals of a
	if off, ok := committed(t, brokers, cfg.Group, "fence")[moved]; ok && off > 0 {
		t.Fatalf("old owner committed offset %d for revoked partition %d", off, moved)
	}
	for _, d := range got {
		d.Settle(nil)
	}
	waitFor(t, "new owner's commit", func() bool { return committed(t, brokers, cfg.Group, "fence")[moved] == 5 })
}

// hwMark returns the high-water mark in the group's commit metadata for topic/0, -1 when none.
func hwMark(t *testing.T, brokers []string, group, topic string) int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	offs, err := kadm.NewClient(cl).FetchOffsets(context.Background(), group)
	if err != nil {
		t.Fatal(err)
	}
	mark := int64(-1)
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic && o.Partition == 0 && strings.HasPrefix(o.Metadata, hwPrefix) {
			mark, _ = strconv.ParseInt(strings.TrimPrefix(o.Metadata, hwPrefix), 10, 64)
		}
	})
	return mark
}

// TestHighWaterMarkIsReservedBeforeHandingOut: at any moment the group's commit metadata
// covers every record handed out, so a kill -9 cannot leave an unflagged gap.
func TestHighWaterMarkIsReservedBeforeHandingOut(t *testing.T) {
	brokers := newCluster(t)
	createTopic(t, brokers, "reserve", 1)
	produceN(t, brokers, "reserve", 1, 3*reserveStep)
	cfg := testConfig(brokers, "reserve")
	cfg.CommitInterval = time.Hour // only reservations commit
	s, err := New(cfg, "", WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	defer s.Close(context.Background())
	read := 0
	for _, upTo := range []int{1, reserveStep / 2, reserveStep, 2 * reserveStep} {
		ds := readN(t, s, upTo-read)
		read = upTo
		last := ds[len(ds)-1].Offset
		if mark := hwMark(t, brokers, cfg.Group, "reserve"); mark <= last {
			t.Fatalf("handed out offset %d with the durable mark at %d", last, mark)
		}
		for _, d := range ds {
			if d.Redelivered {
				t.Fatalf("offset %d flagged redelivered on a fresh group", d.Offset)
			}
		}
	}
}

// TestNewOwnerFlagsUpToTheMarkAfterKill: after a kill -9 of the owner, the next owner
// flags every record below the mark the dead one had reserved, and only those.
func TestNewOwnerFlagsUpToTheMarkAfterKill(t *testing.T) {
	brokers := newCluster(t)
	createTopic(t, brokers, "kill", 1)
	produceN(t, brokers, "kill", 1, 2*reserveStep)
	cfg := testConfig(brokers, "kill")
	a, err := New(cfg, "", WithLogger(testLogger(t)), WithClientOptions(fastGroup...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, a.Run)
	for _, d := range readN(t, a, 30)[:10] {
		d.Settle(nil)
	}
	waitFor(t, "commit of offset 10", func() bool { return committed(t, brokers, cfg.Group, "kill")[0] == 10 })
	mark := hwMark(t, brokers, cfg.Group, "kill")
	if mark < 30 {
		t.Fatalf("mark %d below what was handed out (30)", mark)
	}
	a.kill()
	b, err := New(cfg, "", WithLogger(testLogger(t)), WithClientOptions(fastGroup...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, b.Run)
	defer b.Close(context.Background())
	for _, d := range readN(t, b, 2*reserveStep-10) {
		if want := d.Offset < mark; d.Redelivered != want {
			t.Fatalf("offset %d: redelivered %v, want %v (mark %d)", d.Offset, d.Redelivered, want, mark)
		}
	}
}

// TestStaticMembershipRejoinsQuickly: with group_instance_id a restarted member gets its
// partitions back without waiting for the session timeout.
func TestStaticMembershipRejoinsQuickly(t *testing.T) {
	brokers := newCluster(t)
	createTopic(t, brokers, "static", 2)
	produceN(t, brokers, "static", 2, 3)
	cfg := testConfig(brokers, "static")
	cfg.GroupInstanceID = "pod-0"
	long := append(append([]kgo.Opt(nil), fastGroup...), kgo.SessionTimeout(45*time.Second))
	a, err := New(cfg, "", WithLogger(testLogger(t)), WithClientOptions(long...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, a.Run)
	for _, d := range readN(t, a, 3) {
		d.Settle(nil)
	}
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b, err := New(cfg, "", WithLogger(testLogger(t)), WithClientOptions(long...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, b.Run)
	defer b.Close(context.Background())
	readN(t, b, 3) // the three not settled before
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("restarted static member took %v to consume (session timeout is 45s)", d)
	}
}

// TestLaneLimitHoldsBackAPartition: a partition the gate reports full is not handed out;
// others are; after LaneFreed the held records follow in order.
func TestLaneLimitHoldsBackAPartition(t *testing.T) {
	brokers := newCluster(t)
	createTopic(t, brokers, "limit", 2)
	produceN(t, brokers, "limit", 2, 5)
	s, err := New(testConfig(brokers, "limit"), "", WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	defer s.Close(context.Background())
	var held atomic.Bool
	held.Store(true)
	s.LimitLanes(func(lane string) bool { return held.Load() && lane == "limit/0" })
	for _, d := range readN(t, s, 5) {
		if d.Partition != 1 {
			t.Fatalf("got partition %d while partition 0 is held back", d.Partition)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	if d, err := s.Read(ctx); err == nil {
		t.Fatalf("read %s/%d while its lane is full", d.Lane, d.Offset)
	}
	cancel()
	held.Store(false)
	s.LaneFreed()
	for i, d := range readN(t, s, 5) {
		if d.Partition != 0 || d.Offset != int64(i) {
			t.Fatalf("after release got %d/%d, want 0/%d", d.Partition, d.Offset, i)
		}
	}
}

// TestHeldPartitionsDoNotStarveOthers: a backlog larger than one fetch, and lanes that stay
// full (a slow app). Partitions missing from the first fetches must still be fetched and
// handed out while the buffered ones are held back, or their lanes idle until the buffered
// partitions drain (a backlog on a few partitions would halve throughput, or worse). And
// the held partitions' buffers stay bounded meanwhile.
func TestHeldPartitionsDoNotStarveOthers(t *testing.T) {
	const parts, perPart, limit = 8, 1200, 3
	brokers := newCluster(t)
	createTopic(t, brokers, "starve", parts)
	// 1 KiB incompressible values in 16 KiB batches: one partition's share of a fetch
	// (128 KiB) is ~125 records, far less than the backlog.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytes(16<<10))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var recs []*kgo.Record
	for p := range parts {
		for range perPart {
			v := make([]byte, 1024)
			for i := range v {
				v[i] = byte(rng.Uint32())
			}
			recs = append(recs, &kgo.Record{Topic: "starve", Partition: int32(p), Value: v})
		}
	}
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close()

	s, err := New(testConfig(brokers, "starve"), "", WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	defer s.Close(context.Background())
	var mu sync.Mutex
	out := map[string]int{} // lane → handed out, never settled: the lane stays full
	s.LimitLanes(func(lane string) bool {
		mu.Lock()
		defer mu.Unlock()
		return out[lane] >= limit
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for n := 0; n < parts*limit; n++ {
		d, err := s.Read(ctx)
		if err != nil {
			mu.Lock()
			t.Fatalf("read %d of %d with every lane filling up: %v; handed out per lane: %v", n, parts*limit, err, out)
		}
		mu.Lock()
		out[d.Lane]++
		mu.Unlock()
	}
	if len(out) != parts {
		t.Fatalf("lanes served: %v, want all %d", out, parts)
	}
	// Every lane is full now: a Read waits (fetching for nobody) and the buffers stay
	// within the per-partition bound plus what fetches already in flight bring.
	rctx, rcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	if d, err := s.Read(rctx); err == nil {
		t.Fatalf("read %s/%d while every lane is full", d.Lane, d.Offset)
	}
	rcancel()
	s.mu.Lock()
	buffered := s.buffered
	s.mu.Unlock()
	if bound := parts * (perPartitionBuffer(parts) + 2*130); buffered > bound || buffered == 0 {
		t.Fatalf("%d records buffered, want 1..%d (backlog %d)", buffered, bound, parts*perPart)
	}
	t.Logf("%d of %d records buffered while every lane is full", buffered, parts*perPart)
}

// TestCloseWhileJoiningARebalancingGroup: a member stopped while it joins a group that is
// rebalancing (the other member still holds its partitions with records unsettled) closes
// promptly and without an error.
func TestCloseWhileJoiningARebalancingGroup(t *testing.T) {
	brokers := newCluster(t)
	createTopic(t, brokers, "join", 4)
	produceN(t, brokers, "join", 4, 50)
	cfg := testConfig(brokers, "join")
	a, err := New(cfg, "", WithLogger(testLogger(t)), WithClientOptions(fastGroup...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, a.Run)
	defer a.Close(context.Background())
	readN(t, a, 20)   // a owns every partition, its records unsettled: a revoke waits for them
	keepReading(t, a) // so that it takes part in the rebalance
	for _, wait := range []time.Duration{0, 50 * time.Millisecond, 300 * time.Millisecond, time.Second} {
		b, err := New(cfg, "", WithLogger(testLogger(t)), WithClientOptions(fastGroup...))
		if err != nil {
			t.Fatal(err)
		}
		lifecycletest.Start(t, b.Run)
		rctx, rcancel := context.WithCancel(context.Background())
		readDone := make(chan struct{})
		go func() { // as the gate does: Read until cancelled
			defer close(readDone)
			for {
				if _, err := b.Read(rctx); err != nil {
					return
				}
			}
		}()
		time.Sleep(wait)
		rcancel()
		<-readDone
		start := time.Now()
		cctx, ccancel := context.WithTimeout(context.Background(), 15*time.Second)
		err = b.Close(cctx)
		ccancel()
		if took := time.Since(start); err != nil || took > 5*time.Second {
			t.Fatalf("close %v after start: %v after %v", wait, err, took.Round(time.Millisecond))
		}
	}
}

// TestCloseDoesNotWaitOutAStuckRebalance: another member that blocks the rebalance (it
// polled and does not allow rebalancing) cannot hold a joining member's shutdown for the
// whole rebalance timeout.
func TestCloseDoesNotWaitOutAStuckRebalance(t *testing.T) {
	brokers := newCluster(t)
	createTopic(t, brokers, "stuck", 2)
	produceN(t, brokers, "stuck", 2, 5)
	cfg := testConfig(brokers, "stuck")
	slow := append(append([]kgo.Opt(nil), fastGroup...), kgo.RebalanceTimeout(30*time.Second))
	a, err := New(cfg, "", WithLogger(testLogger(t)), WithClientOptions(slow...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, a.Run)
	defer a.kill()
	readN(t, a, 10)
	// Poll without allowing the rebalance that b's join starts: a stalls it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	a.cl.PollFetches(ctx)
	cancel()
	b, err := New(cfg, "", WithLogger(testLogger(t)), WithClientOptions(slow...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, b.Run)
	time.Sleep(time.Second) // b is joining, the rebalance is stuck behind a
	start := time.Now()
	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	if err := b.Close(cctx); err != nil {
		t.Fatalf("close: %v after %v", err, time.Since(start).Round(time.Millisecond))
	}
	if took := time.Since(start); took > leaveWait+3*time.Second {
		t.Fatalf("close took %v with the rebalance stuck", took.Round(time.Millisecond))
	}
}

// lagSeries returns this replica's mqsidecar_consumer_lag by topic (only the series it
// exports).
func lagSeries(t *testing.T, m *metrics.Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "mqsidecar_consumer_lag" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "topic" {
					out[l.GetValue()] = mt.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}

// TestLagOfLostTopicIsNotKept: a replica that loses every partition of a topic in a
// rebalance stops exporting lag for it, so the fleet's sum is the group's lag, not that
// plus a frozen value from the former owner.
func TestLagOfLostTopicIsNotKept(t *testing.T) {
	brokers := newCluster(t)
	createTopic(t, brokers, "lag-a", 1)
	createTopic(t, brokers, "lag-b", 1)
	produceN(t, brokers, "lag-a", 1, 5)
	produceN(t, brokers, "lag-b", 1, 5)
	cfg := testConfig(brokers, "lag-a")
	cfg.Group = "g-lag"
	cfg.Topics = []string{"lag-a", "lag-b"}

	ma, mb := metrics.New(), metrics.New()
	a, err := New(cfg, "", WithLogger(testLogger(t)), WithEvents(ma), WithClientOptions(fastGroup...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, a.Run)
	defer a.Close(context.Background())
	held := readN(t, a, 10) // a owns both topics' partitions and holds every record: lag 5 each
	waitFor(t, "a's lag of both topics", func() bool {
		l := lagSeries(t, ma)
		return l["lag-a"] == 5 && l["lag-b"] == 5
	})

	b, err := New(cfg, "", WithLogger(testLogger(t)), WithEvents(mb), WithClientOptions(fastGroup...))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, b.Run)
	defer b.Close(context.Background())
	keepReading(t, a)     // so that it takes part in the rebalance
	got := readN(t, b, 5) // b holds the moved topic's records: its lag there is 5
	moved, kept := got[0].Source, "kafka://lag-a"
	if moved == kept {
		kept = "kafka://lag-b"
	}
	moved, kept = strings.TrimPrefix(moved, "kafka://"), strings.TrimPrefix(kept, "kafka://")
	for _, d := range held {
		if d.IsFenced() && d.Source != "kafka://"+moved {
			t.Fatalf("a lost %s too", d.Source)
		}
	}
	waitFor(t, "b's lag of "+moved, func() bool { return lagSeries(t, mb)[moved] == 5 })
	time.Sleep(500 * time.Millisecond) // several of a's lag reports
	la := lagSeries(t, ma)
	if v, ok := la[moved]; ok && v != 0 {
		t.Fatalf("a still reports lag %v for %s, which it lost to b (a: %v, b: %v)", v, moved, la, lagSeries(t, mb))
	}
	if la[kept] != 5 {
		t.Fatalf("a's lag for %s, which it kept: %v, want 5", kept, la[kept])
	}
	if sum := la[moved] + lagSeries(t, mb)[moved]; sum != 5 {
		t.Fatalf("the fleet's lag for %s sums to %v, want 5", moved, sum)
	}
}

// TestHeldLanesDoNotBusyLoop: while every partition with records is held by the gate and
// the others have nothing, Read waits for a wake or records instead of polling in a loop —
// also after a wake that found its lane full again.
func TestHeldLanesDoNotBusyLoop(t *testing.T) {
	brokers := newCluster(t)
	createTopic(t, brokers, "busy", 2)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := range 20 { // partition 0 only: partition 1 stays empty (starved)
		id := fmt.Sprintf("b-%d", i)
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: "busy", Partition: 0, Value: []byte(id),
			Headers: []kgo.RecordHeader{{Key: "message-id", Value: []byte(id)}}}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(testConfig(brokers, "busy"), "", WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	lifecycletest.Start(t, s.Run)
	defer s.Close(context.Background())
	var full atomic.Bool
	s.LimitLanes(func(string) bool { return full.Load() })
	readN(t, s, 1)
	full.Store(true) // the gate holds partition 0 from now on
	keepReading(t, s)
	waitFor(t, "Read waiting for a wake", func() bool { return s.polls.Load() > 0 })
	time.Sleep(200 * time.Millisecond)
	s.LaneFreed() // a wake that finds the lane full again
	before := s.polls.Load()
	time.Sleep(time.Second)
	if n := s.polls.Load() - before; n > 10 {
		t.Fatalf("%d polls in a second while every lane was held: a busy loop", n)
	}
}

// newShareCluster is a kfake cluster whose share-group locks last lock, so a killed
// member's records come back quickly.
func newShareCluster(t *testing.T, lock time.Duration) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.BrokerConfigs(map[string]string{
		"group.share.record.lock.duration.ms": strconv.FormatInt(lock.Milliseconds(), 10),
		"share.record.lock.sweep.interval.ms": "100",
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// TestConformanceShareKfake runs the shared adapter suite in share mode on the fake.
func TestConformanceShareKfake(t *testing.T) {
	adaptertest.Run(t, shareHarness(newShareCluster(t, 3*time.Second)))
}
