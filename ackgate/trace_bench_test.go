package ackgate

import (
	"context"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/dedup"
	"github.com/mqsidecar/mqsidecar/internal/lifecycle/lifecycletest"
	"github.com/mqsidecar/mqsidecar/metrics"
	"github.com/mqsidecar/mqsidecar/tracing"
)

// BenchmarkGateTracing is the cost of tracing on the partition scenario's shape, through the
// whole gate: 8 partitions (lanes), max_inflight 64, the bbolt dedup store (group commit, 1 ms
// linger, fsync), a 256-byte message with a sampled traceparent, the app in another process
// answering 200 at once (app=instant) or after 0.2 ms or 1 ms, as the bench's app profiles.
// off: no provider (the default). on: 100% sampling, every span exported by the sidecar's
// exporter (tracing.NewExporter) over OTLP/HTTP to a collector in a third process — the batch
// processor blocks instead of dropping spans, and the flush of the last ones is timed, so
// this is the worst case of what tracing costs. msgs/s is the gate's throughput, cpu-µs/msg
// this process's CPU per message, allocs/op and B/op per message. Run by `make bench`:
//
//	go test ./ackgate/ -run '^$' -bench '^BenchmarkGateTracing$' -benchtime 20000x -count 5
//
// For an A/B, run one sub-benchmark at a time, alternating (-bench
// '^BenchmarkGateTracing$/^app=instant$/^tracing=off$', then =on, ...): -count repeats each
// sub-benchmark in a row. Measured so, 7 alternating runs each, medians, on 2 cores shared
// with other work (load 15-20, so the throughput figures are noisy; CPU per message less so):
//
//	tracing off, this gate vs the gate before the changes below: 51.0 vs 55.4 cpu-µs/msg,
//	7.6k vs 7.1k msgs/s, 37 vs 37 allocs/msg: nothing measurable.
//	tracing on vs off, instant app: 87.5 vs 55.1 cpu-µs/msg, 5.9k vs 8.6k msgs/s (-32%),
//	60 vs 37 allocs/msg; with the SDK's own OTLP exporter, as before: 107.9 cpu-µs/msg,
//	5.2k msgs/s (-40%), 120 allocs/msg. 0.2 ms app: 108.9 vs 65.0 cpu-µs/msg (-33%, noisy);
//	1 ms app: 147.9 vs 105.7 cpu-µs/msg, 2.75k vs 3.3k msgs/s (-17%).
//	10% sampled (OTEL_TRACES_SAMPLER=parentbased_traceidratio, _ARG=0.1), before the
//	changes: 41-45 vs 42 cpu-µs/msg: throughput unchanged.
//
// Where the cost was (CPU profiles, pprof -diff_base off): half in the SDK's span objects
// (Start, SetAttributes, the snapshot and attribute de-duplication at End, with the GC they
// cause), a third in the SDK exporter's conversion into protobuf structs and their encoding.
// The sidecar's exporter encodes straight into one reused buffer (no allocation per span),
// the gate sets each span's attributes once (at its end) and reuses its per-source span
// names and options: 120 -> 60 allocs and 12.4 -> 8.6 KB per message. Then (2026-12-02, 5
// alternating runs, load ~12) one cancellation context for every push and pooled attribute
// slices: 59 -> 53 allocs, 8.3 -> 7.0 KB per message, tracing's CPU +16.7 -> +13.9 µs/msg
// (tracing off unchanged: 37 allocs, 2.5 KB). What remains is the SDK's;
// BenchmarkDeliverySpans measures the spans of one delivery alone, and `go run ./bench
// -scenario tracing` the sidecar's throughput with and without them (docs/performance.md).
func BenchmarkGateTracing(b *testing.B) {
	collector := benchApp(b, 0) // answers every POST 200 with an empty body, as a collector does
	for _, app := range []struct {
		name  string
		delay time.Duration
	}{{"instant", 0}, {"200us", 200 * time.Microsecond}, {"1ms", time.Millisecond}} {
		url := benchApp(b, app.delay)
		b.Run("app="+app.name, func(b *testing.B) {
			b.Run("tracing=off", func(b *testing.B) { benchGate(b, url, Tracing{}, nil) })
			b.Run("tracing=on", func(b *testing.B) {
				exp, err := tracing.NewExporter(context.Background(), otlptracehttp.NewClient(otlptracehttp.WithEndpointURL(collector[:len(collector)-len("/events")]+"/v1/traces")))
				if err != nil {
					b.Fatal(err)
				}
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(exp, sdktrace.WithBlocking()))
				benchGate(b, url, Tracing{Provider: tp}, func() {
					if err := tp.Shutdown(context.Background()); err != nil {
						b.Fatal(err)
					}
				})
			})
		})
	}
}

// benchSource hands out n deliveries of the partition scenario's shape over 8 lanes and
// closes done when all are settled.
type benchSource struct {
	n, read int
	prefix  string
	settled atomic.Int64
	done    chan struct{}
}

func (s *benchSource) Read(ctx context.Context) (*adapters.Delivery, error) {
	if s.read >= s.n {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	d := benchDelivery(s.read)
	d.ID = s.prefix + strconv.Itoa(s.read)
	d.Partition = int32(s.read % 8)
	d.Lane = "orders/" + strconv.Itoa(s.read%8)
	d.Ack = func(error) {
		if s.settled.Add(1) == int64(s.n) {
			close(s.done)
		}
	}
	s.read++
	return d, nil
}

func (s *benchSource) DeadLetter(context.Context, *adapters.Delivery, adapters.Failure) error {
	return adapters.ErrNoDeadLetter
}
func (s *benchSource) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (s *benchSource) Ready() error                  { return nil }
func (s *benchSource) Close(context.Context) error   { return nil }

var benchRuns atomic.Int64

// benchGate runs b.N messages through a gate with tracing tr; flush, when set, runs before
// the timer stops.
func benchGate(b *testing.B, app string, tr Tracing, flush func()) {
	st, err := dedup.Open(filepath.Join(b.TempDir(), "dedup.db"), dedup.Options{TTL: time.Hour, Linger: time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	lifecycletest.Start(b, st.Run)
	src := &benchSource{n: b.N, prefix: "run" + strconv.FormatInt(benchRuns.Add(1), 10) + "/", done: make(chan struct{})}
	g := New(src, st, Options{
		Push:     PushOptions{URL: app, Timeout: 10 * time.Second, EventType: "mqsidecar.message", MaxResponseBytes: 64 << 10},
		Ordering: OrderPartition, MaxInflight: 64, DrainTimeout: 5 * time.Second, Metrics: metrics.New(),
		Backoff: Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, Multiplier: 2},
		Topics:  []string{"orders"}, Tracing: tr,
	})
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0, t0 := cpuTime(), time.Now()
	go func() { runErr <- g.Run(ctx) }()
	select {
	case <-src.done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d settled in 5 minutes", src.settled.Load(), b.N)
	}
	if flush != nil {
		flush()
	}
	elapsed, cpu := time.Since(t0), cpuTime()-cpu0
	b.StopTimer()
	cancel()
	if err := <-runErr; err != nil {
		b.Fatal(err)
	}
	if n := metrics.CounterSum(g.m.Acked); int(n) != b.N {
		b.Fatalf("%v of %d acknowledged", n, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
	}
}
