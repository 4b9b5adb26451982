// Command bench measures mqsidecar against a hand-written consumer loop (poll, POST each
// record, commit) on the same embedded Kafka (kfake), the same instant app and the same
// machine, alternating runs, and prints medians and ratios.
//
// Each run: produce the messages first, then start the consumer as a separate process (so
// its peak RSS is its own), and measure from the first push the app receives to the moment
// the group's committed offsets reach the end of every partition. Push-to-commit latency is
// per message: the time from its push arriving at the app to the first observed commit
// covering its offset (committed offsets are polled every few milliseconds).
//
// The sidecar commits every 20 ms here (its default is 1 s): a run lasts 1-3 s and ends at
// the commit covering the last offset, so a longer interval would add up to one interval to
// every run, in steps, while the loop commits each batch synchronously.
//
// The fleet scenario (-scenario fleet) is the partition workload (30k messages by default)
// consumed by three sidecar processes in one consumer group, once with each replica's own
// bbolt file and once with one Redis shared by the three (dedup.store: redis), alternating,
// for each app profile of -app-delays (the instant app and one sleeping 0.2 ms per push by
// default). The Redis is a private redis-server (appendonly yes, appendfsync always, on a
// free loopback port, data in the temp dir), or the one MQSIDECAR_E2E_REDIS names; each run
// uses a key prefix of its own and deletes its keys afterwards. Fetches are held (a kfake
// control function) until the group is stable with three members owning all partitions, so
// the replicas share the work from the first push. It reports the three replicas' total
// msg/s, push-to-commit latency, the largest replica's peak RSS, the replicas' summed CPU per
// message (and redis-server's own, when private) and the ratio redis/bbolt.
//
// Usage: go run ./bench [-runs 5] [-messages N] [-scenario partition|key|none|fleet] [-only NAME] [-app-delays 0,200us]
//
// Investigation aids: BENCH_DEBUG=1 prints the consumer's logs, memory lines and the
// sidecar's metrics after each run; BENCH_CONSUMER_ENV="K=V ..." adds environment to the
// consumer process (GODEBUG=gctrace=1, GOGC=..., MQSIDECAR_CPUPROFILE=file; in the fleet
// scenario each replica writes file.<store>.run<N>.replica<I>);
// BENCH_SIDECAR_BIN=path runs that binary instead of building ./cmd/mqsidecar.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

const (
	topic      = "bench"
	partitions = 8
)

type scenario struct {
	name     string
	ordering string
	appDelay time.Duration
	keys     int
}

var scenarios = map[string]scenario{
	// Issue: 50k x ~100 B, 8 partitions, instant app, dedup on, ordering partition.
	"partition": {name: "partition", ordering: "partition"},
	// Issue: app with 5 ms latency, 200 keys, max_inflight 64; ordering key vs partition vs none.
	"key": {name: "key", ordering: "key", appDelay: 5 * time.Millisecond, keys: 200},
	// For investigations: the instant app without ordering constraints.
	"none": {name: "none", ordering: "none"},
}

func main() {
	mode := flag.String("mode", "", "internal: baseline (run the hand-written loop)")
	runs := flag.Int("runs", 5, "runs per contender; medians are reported")
	messages := flag.Int("messages", 0, "messages per run (default 50000; 10000 for -scenario key, whose baseline does 200 msg/s; 30000 for -scenario fleet)")
	scen := flag.String("scenario", "partition", "partition | key | none | fleet")
	appDelays := flag.String("app-delays", "0,200us", "-scenario fleet: the app profiles, comma-separated push latencies (0 = the instant app)")
	only := flag.String("only", "", "run only the contenders whose name contains this (investigations; no ratios without the loop)")
	bytesFlags := bytesFlagSet() // -scenario bytes (bench/bytes.go)
	brokers := flag.String("brokers", "", "internal")
	appURL := flag.String("app", "", "internal")
	flag.Parse()
	if *mode == "baseline" {
		if err := baseline(strings.Split(*brokers, ","), *appURL); err != nil {
			fmt.Fprintln(os.Stderr, "baseline:", err)
			os.Exit(1)
		}
		return
	}
	if *scen == "bytes" {
		runBytes(*runs, bytesFlags)
		return
	}
	if *scen == "fleet" {
		var delays []time.Duration
		for _, f := range strings.Split(*appDelays, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(f))
			if err != nil {
				fmt.Fprintln(os.Stderr, "-app-delays:", err)
				os.Exit(2)
			}
			delays = append(delays, d)
		}
		if *messages == 0 {
			*messages = 30000
		}
		if err := fleet(*runs, *messages, delays, *only); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	sc, ok := scenarios[*scen]
	if !ok {
		fmt.Fprintln(os.Stderr, "unknown scenario", *scen)
		os.Exit(2)
	}
	if *messages == 0 {
		*messages = 50000
		if sc.appDelay > 0 {
			*messages = 10000
		}
	}
	if err := bench(sc, *runs, *messages, *only); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// result is one run of one contender.
type result struct {
	rate     float64 // msg/s
	p50, p99 time.Duration
	rssMB    float64
	cpuUs    float64 // consumer CPU (user+sys) per message, microseconds
	benchUs  float64 // this process's CPU per message while the consumer ran: broker + app
	order    int     // per-key order violations seen by the app
}

const loopName = "hand-written loop"

type contender struct {
	name string
	cmd  func(brokers, appURL, dir string) *exec.Cmd
}

func bench(sc scenario, runs, n int, only string) error {
	dir, err := os.MkdirTemp("", "mqsidecar-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := sidecarBinary(dir)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	sidecar := func(ordering string) contender {
		return contender{name: "mqsidecar (ordering: " + ordering + ")", cmd: func(brokers, appURL, rdir string) *exec.Cmd {
			admin := `""`
			if os.Getenv("BENCH_DEBUG") != "" {
				admin = debugAdmin // BENCH_DEBUG prints the sidecar's metrics after each run
			}
			cfg := fmt.Sprintf(`source:
  kind: kafka
  kafka: {brokers: [%s], group: bench, topics: [%s], message_id: "header:message-id", commit_interval: 20ms}
app: {url: %q}
delivery: {ordering: %s, max_inflight: 64}
dedup: {enabled: true, path: %q}
admin: {listen: %s}
log: {level: warn}
`, brokers, topic, appURL, ordering, filepath.Join(rdir, "dedup.db"), admin)
			path := filepath.Join(rdir, "config.yaml")
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				panic(err)
			}
			return exec.Command(bin, "run", "--config", path)
		}}
	}
	contenders := []contender{{name: loopName, cmd: func(brokers, appURL, _ string) *exec.Cmd {
		return exec.Command(self, "-mode", "baseline", "-brokers", brokers, "-app", appURL)
	}}}
	if sc.name == "key" {
		contenders = append(contenders, sidecar("key"), sidecar("partition"), sidecar("none"))
	} else {
		contenders = append(contenders, sidecar(sc.ordering))
	}
	if only != "" {
		contenders = slices.DeleteFunc(contenders, func(c contender) bool { return !strings.Contains(c.name, only) })
		if len(contenders) == 0 {
			return fmt.Errorf("-only %q matches no contender", only)
		}
	}

	fmt.Printf("mqsidecar bench, scenario %q: %d messages of ~100 B (16 KiB producer batches), %d partitions, app latency %v, dedup on, max_inflight 64, commit every 20ms; %d runs each, alternating; medians\n",
		sc.name, n, partitions, sc.appDelay, runs)
	results := make([][]result, len(contenders))
	for r := 0; r < runs; r++ {
		for i, c := range contenders {
			res, err := runOnce(sc, c, n, dir)
			if err != nil {
				return fmt.Errorf("%s run %d: %w", c.name, r+1, err)
			}
			fmt.Printf("  run %d %-34s %9.0f msg/s  p50 %7.1f ms  p99 %7.1f ms  RSS %5.1f MB  CPU %5.1f µs/msg (broker+app %5.1f)  order violations %d\n",
				r+1, c.name, res.rate, ms(res.p50), ms(res.p99), res.rssMB, res.cpuUs, res.benchUs, res.order)
			results[i] = append(results[i], res)
		}
	}
	fmt.Printf("\n%-34s %10s %10s %10s %12s %11s %8s\n", "median of "+strconv.Itoa(runs), "msg/s", "p50 ms", "p99 ms", "peak RSS MB", "CPU µs/msg", "vs loop")
	base := median(results[0], func(r result) float64 { return r.rate })
	for i, c := range contenders {
		rate := median(results[i], func(r result) float64 { return r.rate })
		ratio := "-"
		if contenders[0].name == loopName {
			ratio = fmt.Sprintf("%.2fx", rate/base)
		}
		fmt.Printf("%-34s %10.0f %10.1f %10.1f %12.1f %11.1f %8s\n", c.name, rate,
			median(results[i], func(r result) float64 { return ms(r.p50) }),
			median(results[i], func(r result) float64 { return ms(r.p99) }),
			median(results[i], func(r result) float64 { return r.rssMB }),
			median(results[i], func(r result) float64 { return r.cpuUs }), ratio)
	}
	return nil
}

func runOnce(sc scenario, c contender, n int, dir string) (result, error) {
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		return result{}, err
	}
	defer kafka.Close()
	brokers := strings.Join(kafka.ListenAddrs(), ",")
	ends, err := produce(kafka.ListenAddrs(), n, sc.keys)
	if err != nil {
		return result{}, fmt.Errorf("produce: %w", err)
	}
	a := newApp(ends, sc.appDelay)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, err
	}
	srv := &http.Server{Handler: a}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	rdir, err := os.MkdirTemp(dir, "run-")
	if err != nil {
		return result{}, err
	}
	cmd := c.cmd(brokers, "http://"+ln.Addr().String()+"/", rdir)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if extra := os.Getenv("BENCH_CONSUMER_ENV"); extra != "" { // e.g. GODEBUG=gctrace=1
		cmd.Env = append(os.Environ(), strings.Fields(extra)...)
	}
	benchCPU := cpuSeconds(os.Getpid())
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()

	// Poll committed offsets until every partition is fully committed.
	cl, err := kgo.NewClient(kgo.SeedBrokers(kafka.ListenAddrs()...))
	if err != nil {
		return result{}, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	committed := make([]int64, partitions)
	deadline := time.Now().Add(5 * time.Minute)
	var rss float64
	for {
		if time.Now().After(deadline) {
			return result{}, fmt.Errorf("not fully committed after 5 minutes; logs:\n%s", tail(logs.String()))
		}
		if cmd.ProcessState != nil {
			return result{}, fmt.Errorf("consumer exited; logs:\n%s", tail(logs.String()))
		}
		offs, err := adm.FetchOffsets(context.Background(), "bench")
		now := time.Now()
		if err == nil {
			offs.Each(func(o kadm.OffsetResponse) {
				if o.Topic == topic && o.At > committed[o.Partition] {
					a.committed(o.Partition, committed[o.Partition], o.At, now)
					committed[o.Partition] = o.At
				}
			})
		}
		if rs := peakRSS(cmd.Process.Pid); rs > rss {
			rss = rs
		}
		done := true
		for p, end := range ends {
			if committed[p] < end {
				done = false
			}
		}
		if done {
			break
		}
		time.Sleep(3 * time.Millisecond)
	}
	res := a.result(n)
	res.rssMB = rss
	res.cpuUs = cpuSeconds(cmd.Process.Pid) * 1e6 / float64(n)
	res.benchUs = (cpuSeconds(os.Getpid()) - benchCPU) * 1e6 / float64(n)
	if os.Getenv("BENCH_DEBUG") != "" {
		fmt.Println(logs.String())
		if strings.HasPrefix(c.name, "mqsidecar") {
			printMetrics()
		}
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Rss") || strings.HasPrefix(l, "VmHWM") {
				fmt.Println("   ", l)
			}
		}
	}
	return res, nil
}

// produce writes n records round-robin over the partitions and returns each partition's end
// offset.
func produce(brokers []string, n, keys int) ([]int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerLinger(5*time.Millisecond),
		// 16 KiB batches: the Java producer's default batch.size, what most topics hold.
		kgo.ProducerBatchMaxBytes(16<<10))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ends := make([]int64, partitions)
	var wg sync.WaitGroup
	var failed atomic.Value
	for i := 0; i < n; i++ {
		p := int32(i % partitions)
		// ~100 B of JSON that compresses like real events do (not a run of one byte).
		payload := fmt.Appendf(nil, `{"order":%d,"customer":"c-%05d","amount":%d.%02d,"sku":"%08x","note":"bench"}`,
			i, i%9973, i%997, i%100, uint32(i)*2654435761)
		r := &kgo.Record{Partition: p, Value: payload, Headers: []kgo.RecordHeader{{Key: "message-id", Value: []byte("m-" + strconv.Itoa(i))}}}
		if keys > 0 {
			r.Key = []byte("key-" + strconv.Itoa(i%keys))
		}
		ends[p]++
		wg.Add(1)
		cl.Produce(context.Background(), r, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.Store(err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return nil, err
	}
	return ends, nil
}

// app answers 200 (after delay) and records when each partition/offset arrived.
type app struct {
	delay   time.Duration
	mu      sync.Mutex
	pushAt  [][]int64 // [partition][offset] unix nanos of the first push
	commit  [][]int64
	first   time.Time
	last    time.Time
	lastKey map[string]int64 // key → last offset pushed, for order checks
	order   int
	pushes  int          // every push, redeliveries included
	slept   atomic.Int64 // nanoseconds the app spent in its delay (sleeps overshoot under load)
}

func newApp(ends []int64, delay time.Duration) *app {
	a := &app{delay: delay, lastKey: map[string]int64{}}
	for _, e := range ends {
		a.pushAt = append(a.pushAt, make([]int64, e))
		a.commit = append(a.commit, make([]int64, e))
	}
	return a
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	if a.delay > 0 {
		t := time.Now()
		time.Sleep(a.delay)
		a.slept.Add(int64(time.Since(t)))
	}
	p, err1 := strconv.Atoi(r.Header.Get("ce-partition"))
	off, err2 := strconv.ParseInt(r.Header.Get("ce-offset"), 10, 64)
	now := time.Now()
	if err1 == nil && err2 == nil && p < len(a.pushAt) && off < int64(len(a.pushAt[p])) {
		a.mu.Lock()
		a.pushes++
		if a.first.IsZero() {
			a.first = now
		}
		if a.pushAt[p][off] == 0 {
			a.pushAt[p][off] = now.UnixNano()
		}
		if k := r.Header.Get("ce-partitionkey"); k != "" {
			lk := strconv.Itoa(p) + "/" + k
			if last, ok := a.lastKey[lk]; ok && off < last {
				a.order++
			}
			a.lastKey[lk] = off
		}
		a.mu.Unlock()
	}
	w.WriteHeader(http.StatusOK)
}

func (a *app) committed(p int32, from, to int64, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for o := from; o < to && o < int64(len(a.commit[p])); o++ {
		a.commit[p][o] = at.UnixNano()
	}
	if at.After(a.last) {
		a.last = at
	}
}

func (a *app) result(n int) result {
	a.mu.Lock()
	defer a.mu.Unlock()
	var lat []time.Duration
	for p := range a.pushAt {
		for o, push := range a.pushAt[p] {
			if push != 0 && a.commit[p][o] != 0 {
				lat = append(lat, time.Duration(a.commit[p][o]-push))
			}
		}
	}
	slices.Sort(lat)
	pct := func(q float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(q*float64(len(lat)-1))]
	}
	return result{rate: float64(n) / a.last.Sub(a.first).Seconds(), p50: pct(0.5), p99: pct(0.99), order: a.order}
}

// baseline is the hand-written consumer the issue compares against: poll a batch, POST each
// record in order, commit the batch synchronously, repeat.
func baseline(brokers []string, appURL string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup("bench"), kgo.ConsumeTopics(topic),
		kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return err
	}
	defer cl.Close()
	hc := &http.Client{Timeout: 10 * time.Second}
	ctx := context.Background()
	for {
		fs := cl.PollRecords(ctx, 500)
		if fs.IsClientClosed() {
			return nil
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return ferr
		}
		recs := fs.Records()
		for _, r := range recs {
			for {
				req, _ := http.NewRequest(http.MethodPost, appURL, bytes.NewReader(r.Value))
				req.Header.Set("ce-partition", strconv.Itoa(int(r.Partition)))
				req.Header.Set("ce-offset", strconv.FormatInt(r.Offset, 10))
				if len(r.Key) > 0 {
					req.Header.Set("ce-partitionkey", string(r.Key))
				}
				resp, err := hc.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode/100 == 2 {
						break
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		if len(recs) > 0 {
			if err := cl.CommitRecords(ctx, recs...); err != nil {
				return err
			}
		}
	}
}

const debugAdmin = "127.0.0.1:19464"

// printMetrics prints the sidecar's own counters that explain a run (dedup commits, pushes).
func printMetrics() {
	resp, err := http.Get("http://" + debugAdmin + "/metrics")
	if err != nil {
		fmt.Println("    metrics:", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "mqsidecar_") && !strings.Contains(l, "_bucket{") {
			fmt.Println("   ", l)
		}
	}
}

// peakRSS reads VmHWM (peak resident set) of pid in MB; 0 when unavailable.
func peakRSS(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb / 1024
			}
		}
	}
	return 0
}

// cpuSeconds reads utime+stime of pid from /proc (clock ticks of 1/100 s on Linux).
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}
