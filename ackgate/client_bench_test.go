package ackgate

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/adapters"
	"github.com/mqsidecar/mqsidecar/internal/appclient"
)

// BenchmarkPushClient is the evidence for the hand-written client (internal/appclient): the
// push path on the partition-scenario shape (8 to 64 pushes at once, a 256-byte body with
// the CloudEvents headers and three message headers, the app answering 200 at once or after
// 0.2 ms) through this client and through a tuned net/http Transport (idle pool sized to the
// concurrency, no proxy, no compression, HTTP/1.1), whose push reads and classifies the
// answer the same way. The app is a net/http server in another process, so the CPU figure
// is the pushing side's alone: cpu-µs/push is this process's user+system CPU time per push
// (getrusage), allocs/op and B/op the push path's allocations. Run by `make bench`:
//
//	go test ./ackgate/ -run '^$' -bench '^BenchmarkPushClient$' -benchtime 20000x -count 5
func BenchmarkPushClient(b *testing.B) {
	for _, delay := range []time.Duration{0, 200 * time.Microsecond} {
		url := benchApp(b, delay)
		for _, conc := range []int{8, 64} {
			for _, client := range []string{"handwritten", "transport"} {
				name := fmt.Sprintf("app=%s/conc=%d/%s", delayName(delay), conc, client)
				b.Run(name, func(b *testing.B) { benchPush(b, client, url, conc) })
			}
		}
	}
}

func delayName(d time.Duration) string {
	if d == 0 {
		return "0ms"
	}
	return strconv.FormatFloat(d.Seconds()*1000, 'f', -1, 64) + "ms"
}

func benchDelivery(i int) *adapters.Delivery {
	return &adapters.Delivery{
		ID:      "orders/3/" + strconv.Itoa(i),
		Payload: bytes.Repeat([]byte("x"), 256),
		Headers: []adapters.Header{
			{Key: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			{Key: "tenant", Value: "acme"},
			{Key: "schema-version", Value: "3"},
		},
		ContentType:    "application/json",
		Source:         "kafka://orders",
		Time:           time.Unix(1700000000, 0),
		Key:            "customer-42",
		Lane:           "orders/3",
		HasCoordinates: true,
		Partition:      3,
		Offset:         int64(i),
	}
}

func benchPush(b *testing.B, client, url string, conc int) {
	opts := PushOptions{URL: url, Timeout: 10 * time.Second, EventType: "mqsidecar.message", MaxResponseBytes: 64 << 10, Conns: conc}
	var push func(ctx context.Context, d *adapters.Delivery) Result
	switch client {
	case "handwritten":
		p := NewPusher(opts, nil)
		defer p.Close()
		push = func(ctx context.Context, d *adapters.Delivery) Result { return p.Push(ctx, d, 1, false) }
	case "transport":
		tp := newTransportPusher(opts)
		defer tp.close()
		push = tp.push
	}
	ds := make([]*adapters.Delivery, 1024)
	for i := range ds {
		ds[i] = benchDelivery(i)
	}
	ctx := context.Background()
	// Warm the pool: every connection dialled before timing starts.
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() { defer wg.Done(); push(ctx, ds[0]) }()
	}
	wg.Wait()

	var next atomic.Int64
	var failed atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				if r := push(ctx, ds[i%int64(len(ds))]); r.Verdict != Success {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	cpu := cpuTime() - cpu0
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d pushes failed", n, b.N)
	}
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/push")
	}
}

// transportPusher is the alternative to the hand-written client: the same push through a
// net/http Transport tuned for one local origin.
type transportPusher struct {
	p  *Pusher // for the header writer and options
	tr *http.Transport
}

func newTransportPusher(opts PushOptions) *transportPusher {
	return &transportPusher{
		p: NewPusher(opts, nil),
		tr: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        opts.Conns,
			MaxIdleConnsPerHost: opts.Conns,
			IdleConnTimeout:     4 * time.Second,
			DisableCompression:  true,
			ForceAttemptHTTP2:   false,
			// net/http's limit would be 10 MiB; the hand-written client's is 1 MiB.
			MaxResponseHeaderBytes: appclient.MaxHeaderBytes,
		},
	}
}

func (t *transportPusher) close() { t.tr.CloseIdleConnections(); t.p.Close() }

// push builds the request as the hand-written client writes it (header lines from
// writeHeaders, so the header set is identical) and classifies the answer with classify.
func (t *transportPusher) push(ctx context.Context, d *adapters.Delivery) Result {
	ctx, cancel := context.WithTimeout(ctx, t.p.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.p.opts.URL, bytes.NewReader(d.Payload))
	if err != nil {
		return Result{Verdict: Permanent, Err: err}
	}
	req.Header = make(http.Header, 16)
	t.p.eachHeader(d, 1, false, func(k, v string) { req.Header[http.CanonicalHeaderKey(k)] = []string{v} })
	resp, err := t.tr.RoundTrip(req)
	if err != nil {
		return Result{Verdict: Retry, Err: err}
	}
	defer resp.Body.Close()
	var body []byte
	if resp.ContentLength != 0 {
		body, err = io.ReadAll(io.LimitReader(resp.Body, t.p.opts.MaxResponseBytes))
		if err != nil {
			return Result{Verdict: Retry, Err: err}
		}
	}
	return classify(appclient.Response{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After"), Body: body})
}

// benchAppEnv makes the test binary a plain net/http app (TestBenchApp) for the benchmark.
const benchAppEnv = "MQSIDECAR_BENCH_APP_DELAY"

// benchApp starts this test binary as the app in another process and returns its URL.
func benchApp(b *testing.B, delay time.Duration) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBenchApp$")
	cmd.Env = append(os.Environ(), benchAppEnv+"="+delay.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("bench app: %v", err)
	}
	return strings.TrimSpace(line)
}

// TestBenchApp is the benchmark's app when run by benchApp; otherwise it does nothing.
func TestBenchApp(t *testing.T) {
	v := os.Getenv(benchAppEnv)
	if v == "" {
		t.Skip("the app process of BenchmarkPushClient")
	}
	delay, err := time.ParseDuration(v)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("http://%s/events\n", ln.Addr())
	_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if delay > 0 {
			time.Sleep(delay)
		}
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
	}))
}
