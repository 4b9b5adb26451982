package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
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

// -scenario publish: the publish endpoint's throughput and latency. 16 concurrent clients
// publish 1 KiB payloads, each waiting for its answer before the next (as an app's request
// handlers do), through these contenders on the same broker, alternating runs:
//   - loop: a hand-written franz-go producer in this process, 16 goroutines calling
//     ProduceSync (acks=all, idempotent: franz-go's defaults, as the sidecar's publisher);
//   - sidecar: POST /v1/publish/{topic} to the built binary, without a key (nothing stored);
//   - sidecar+key: the same with an Idempotency-Key per message (its claim and its receipt
//     written to the bbolt store, fsynced, before the answer);
//   - "sidecar net/http": the sidecar without a key again, the requests sent by Go's
//     net/http client instead of the lean one (clients.go): what a Go app's client costs;
//   - dapr, when BENCH_DAPRD names a daprd (make bench builds one with hack/daprd.sh): Dapr's
//     publish API, POST /v1.0/publish/{pubsub}/{topic}?metadata.rawPayload=true, its Kafka
//     pub/sub component on the same brokers (Sarama's SyncProducer: acks=all, five retries,
//     not idempotent, Dapr's settings). rawPayload makes it send the body as it is, as
//     mqsidecar does, instead of wrapping it in a CloudEvent. Dapr has no idempotency key,
//     so it has no keyed contender.
//
// The HTTP requests are sent by a lean keep-alive HTTP/1.1 client, the sidecar's own push
// client (internal/appclient, clients.go), unless said otherwise, so that the two cores go to the sidecar and the broker rather than to the load
// generator. A publish counts when it was answered: ProduceSync returned nil, or the
// endpoint 200 (Dapr: 204). The broker is kfake (in this process) and, with -kafka host:port
// or MQSIDECAR_E2E_KAFKA, a real Kafka too (a fresh topic of 8 partitions, replication
// factor 1, per run). Reported: publishes/s, p50 and p99 latency per publish, medians of the
// runs, and ratios to the loop. The CPU per publish of the bench process (the clients and
// kfake, or the loop and kfake) and of the sidecar (or daprd) by their processes' CPU
// clocks over the measured publishes, warm-up excluded, is printed beside: it moves much
// less with other load than the rate does. So is the share of the machine's CPU time that
// the hypervisor stole for other guests during each run (/proc/stat): on a shared VM a run
// with much steal falls behind whatever it measures.
// BENCH_BASELINE_BIN=path adds the two sidecar contenders again running that binary
// ("@baseline", as the other scenarios do), alternating with the others, to compare two
// builds in one run; -cpuprofile PREFIX writes each sidecar run's CPU profile to
// PREFIX-publish-<broker>-<contender>-run<N>.pprof.

const (
	pubClients  = 16
	pubPayload  = 1024
	pubTopic    = "bench-publish"
	pubConsumed = "bench-publish-src" // the sidecar's source topic: empty, so it only publishes
)

type pubResult struct {
	rate     float64 // publishes/s
	p50, p99 time.Duration
	errors   int
	cpuUs    float64 // the sidecar's CPU per publish, µs (0 for the loop)
	benchUs  float64 // the bench process's CPU per publish, µs: the clients (or the loop) and kfake
	// steal: the share of the machine's CPU time the hypervisor gave other guests during
	// the run; on a shared VM it explains most of the runs that fall behind.
	steal float64
}

type pubContender struct {
	name string
	key  bool // sidecar: send an Idempotency-Key
	loop bool
	dapr bool // Dapr's publish API on bin (BENCH_DAPRD)
	// netHTTP: the requests are sent by Go's net/http client instead of the lean one.
	netHTTP bool
	bin     string // sidecar: this binary instead of the bench's ("" = the bench's)
}

// pubContendersFor returns the contenders: the loop, the sidecar without and with a key,
// the sidecar with net/http's clients, the first two sidecar ones on baseBin when it is
// set, and Dapr on daprd when it is set.
func pubContendersFor(baseBin, daprd string) []pubContender {
	cs := []pubContender{{name: "franz-go loop", loop: true}, {name: "sidecar"}, {name: "sidecar+key", key: true},
		{name: "sidecar net/http", netHTTP: true}}
	if baseBin != "" {
		cs = append(cs, pubContender{name: "sidecar@baseline", bin: baseBin}, pubContender{name: "sidecar+key@baseline", key: true, bin: baseBin})
	}
	if daprd != "" {
		cs = append(cs, pubContender{name: "dapr", dapr: true, bin: daprd})
	}
	return cs
}

// publishBench runs -scenario publish.
func publishBench(runs, messages int, kafkaAddr, only, profile string) error {
	if messages == 0 {
		messages = 20000
	}
	dir, bin, err := workDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	daprd := os.Getenv("BENCH_DAPRD")
	if daprd != "" {
		if _, err := os.Stat(daprd); err != nil {
			return fmt.Errorf("BENCH_DAPRD: %w", err)
		}
	} else {
		fmt.Println("Dapr's publish API is not measured: BENCH_DAPRD names no daprd (hack/daprd.sh builds one)")
	}
	pubContenders := pubContendersFor(os.Getenv("BENCH_BASELINE_BIN"), daprd)
	brokers := []string{"kfake"}
	if kafkaAddr != "" {
		brokers = append(brokers, kafkaAddr)
	}
	for _, b := range brokers {
		fmt.Printf("\nmqsidecar bench, scenario \"publish\" on %s: %d clients, %d B payloads, %d publishes per run, acks=all; %d runs each, alternating; medians\n", b, pubClients, pubPayload, messages, runs)
		res := map[string][]pubResult{}
		for run := 1; run <= runs; run++ {
			for _, c := range pubContenders {
				if only != "" && !strings.Contains(c.name, only) {
					continue
				}
				prof := ""
				if profile != "" && !c.loop {
					prof = fmt.Sprintf("%s-publish-%s-%s-run%d.pprof", profile, pubBrokerName(b), strings.NewReplacer("+", "-", "@", "-", " ", "-", "/", "-").Replace(c.name), run)
				}
				r, err := publishOnce(c, b, cmp.Or(c.bin, bin), dir, messages, run, prof)
				if err != nil {
					return fmt.Errorf("%s run %d on %s: %w", c.name, run, b, err)
				}
				fmt.Printf("  run %d %-16s %8.0f publishes/s  p50 %7s  p99 %7s  errors %d%s  steal %.0f%%\n", run, c.name, r.rate, r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.errors, cpuNote(r.benchUs, r.cpuUs), 100*r.steal)
				res[c.name] = append(res[c.name], r)
			}
		}
		base := 0.0 // no ratios when -only left the loop out
		if rs := res[pubContenders[0].name]; len(rs) > 0 {
			base = medianOf(rs, func(r pubResult) float64 { return r.rate })
		}
		fmt.Printf("summary on %s (medians of %d runs; ratio = publishes/s over the loop's):\n", b, runs)
		for _, c := range pubContenders {
			rs := res[c.name]
			if len(rs) == 0 {
				continue
			}
			rate := medianOf(rs, func(r pubResult) float64 { return r.rate })
			ratio := "-"
			if base > 0 {
				ratio = fmt.Sprintf("%.2f", rate/base)
			}
			fmt.Printf("  %-16s %8.0f publishes/s (ratio %s)  p50 %7s  p99 %7s%s  steal %.0f%%\n", c.name, rate, ratio,
				time.Duration(medianOf(rs, func(r pubResult) float64 { return float64(r.p50) })).Round(10*time.Microsecond),
				time.Duration(medianOf(rs, func(r pubResult) float64 { return float64(r.p99) })).Round(10*time.Microsecond),
				cpuNote(medianOf(rs, func(r pubResult) float64 { return r.benchUs }), medianOf(rs, func(r pubResult) float64 { return r.cpuUs })),
				100*medianOf(rs, func(r pubResult) float64 { return r.steal }))
		}
	}
	return nil
}

// cpuNote prints the CPU per publish of the bench process and the sidecar (none for the loop).
func cpuNote(benchUs, us float64) string {
	s := fmt.Sprintf("  CPU/publish: bench %.0f µs", benchUs)
	if us == 0 {
		return s
	}
	return s + fmt.Sprintf(", sidecar %.0f µs", us)
}

// pubBrokerName is broker for a file name: "kfake" or "kafka".
func pubBrokerName(broker string) string {
	if broker == "kfake" {
		return broker
	}
	return "kafka"
}

// publishOnce is one run of c on broker ("kfake" or a real Kafka's address); profile
// names the sidecar's CPU profile ("" = none).
func publishOnce(c pubContender, broker, bin, dir string, n, run int, profile string) (pubResult, error) {
	var addrs []string
	topic := pubTopic
	if broker == "kfake" {
		k, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, pubTopic, pubConsumed))
		if err != nil {
			return pubResult{}, err
		}
		defer k.Close()
		addrs = k.ListenAddrs()
	} else {
		addrs = []string{broker}
		topic = fmt.Sprintf("%s-%d-%d", pubTopic, time.Now().UnixNano()%1e9, run)
		if err := createTopics(addrs, topic, pubConsumed); err != nil {
			return pubResult{}, err
		}
		defer deleteTopic(addrs, topic)
	}
	payload := bytes.Repeat([]byte{'p'}, pubPayload)
	if c.loop {
		cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.RequiredAcks(kgo.AllISRAcks()))
		if err != nil {
			return pubResult{}, err
		}
		defer cl.Close()
		return drive(n, func(ctx context.Context, _ int) error {
			return cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: payload}).FirstErr()
		})
	}
	start, want := startPublishSidecar, http.StatusOK
	if c.dapr {
		start, want = startDapr, http.StatusNoContent
	}
	url, pid, stop, err := start(bin, dir, addrs, topic, profile)
	if err != nil {
		return pubResult{}, err
	}
	defer stop()
	send := netHTTPClient(url)
	if !c.netHTTP {
		if send, err = newLeanClient(url, pubClients); err != nil {
			return pubResult{}, err
		}
	}
	prefix := fmt.Sprintf("r%d-%d-", run, time.Now().UnixNano())
	post := func(ctx context.Context, i int) error {
		key := ""
		if c.key {
			key = prefix + strconv.Itoa(i)
		}
		status, err := send(ctx, payload, key)
		if err != nil {
			return err
		}
		if status != want {
			return fmt.Errorf("answered %d", status)
		}
		return nil
	}
	// Warm up: connections, metadata, the producer ID.
	if _, err := drive(pubClients*20, func(ctx context.Context, i int) error { return post(ctx, -1-i) }); err != nil {
		return pubResult{}, fmt.Errorf("warm-up: %w", err)
	}
	cpu0 := processCPU(pid)
	r, err := drive(n, post)
	r.cpuUs = float64(processCPU(pid)-cpu0) / float64(time.Microsecond) / float64(n)
	return r, err
}

// drive runs n publishes from pubClients goroutines and measures them, with the bench
// process's CPU.
func drive(n int, publish func(ctx context.Context, i int) error) (pubResult, error) {
	ctx := context.Background()
	cpu0 := processCPU(os.Getpid())
	total0, steal0 := boxCPU()
	var next atomic.Int64
	var errs atomic.Int64
	var firstErr atomic.Pointer[error]
	lat := make([][]time.Duration, pubClients)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range pubClients {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := publish(ctx, i); err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	benchUs := float64(processCPU(os.Getpid())-cpu0) / float64(time.Microsecond) / float64(n)
	total1, steal1 := boxCPU()
	all := slices.Concat(lat...)
	if len(all) == 0 {
		if e := firstErr.Load(); e != nil {
			return pubResult{}, *e
		}
		return pubResult{}, errors.New("nothing published")
	}
	slices.Sort(all)
	return pubResult{
		rate: float64(len(all)) / took.Seconds(),
		p50:  all[len(all)/2], p99: all[len(all)*99/100],
		errors: int(errs.Load()), benchUs: benchUs, steal: stealShare(total0, steal0, total1, steal1),
	}, nil
}

// startPublishSidecar starts the binary with the publish endpoint on a free port, the
// Kafka source on the empty pubConsumed topic, and waits until the endpoint accepts; url is
// where topic is published, pid the sidecar's process, profile its CPU profile ("" = none).
func startPublishSidecar(bin, dir string, brokers []string, topic, profile string) (url string, pid int, stop func(), err error) {
	app := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", 0, nil, err
	}
	go func() { _ = app.Serve(aln) }()
	ports, err := freePorts(1)
	if err != nil {
		app.Close()
		return "", 0, nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	cfg := fmt.Sprintf(`source:
  kind: kafka
  kafka: {brokers: [%s], group: bench-publish, topics: [%s], message_id: "header:ce-id"}
app: {url: "http://%s/"}
dedup: {enabled: true, path: "{dir}/dedup.db"}
admin: {listen: ""}
log: {level: warn}
publish: {listen: %q}
`, strings.Join(brokers, ","), pubConsumed, aln.Addr(), listen)
	pid, stopSidecar, err := startServer(dir, "config.yaml", cfg, listen, func(_, path string) *exec.Cmd {
		cmd := exec.Command(bin, "run", "--config", path)
		cmd.Env = consumerEnv(profile) // BENCH_CONSUMER_ENV, e.g. GODEBUG=gctrace=1
		return cmd
	})
	if err != nil {
		app.Close()
		return "", 0, nil, err
	}
	return "http://" + listen + "/v1/publish/" + topic, pid, func() { stopSidecar(); app.Close() }, nil
}

// startDapr starts daprd (bin) with its Kafka pub/sub component on brokers, no app, and
// waits until its HTTP API accepts; url is Dapr's publish API for topic, with the payload
// sent raw. Dapr takes no CPU profile here (profile is ignored).
func startDapr(bin, dir string, brokers []string, topic, _ string) (url string, pid int, stop func(), err error) {
	ports, err := freePorts(4)
	if err != nil {
		return "", 0, nil, err
	}
	component := fmt.Sprintf(`apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: bench}
spec:
  type: pubsub.kafka
  version: v1
  metadata:
  - {name: brokers, value: %q}
  - {name: authType, value: none}
  - {name: disableTls, value: "true"}
`, strings.Join(brokers, ","))
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	pid, stop, err = startServer(dir, "components/kafka.yaml", component, listen, func(rdir, _ string) *exec.Cmd {
		return exec.Command(bin, "--app-id", "bench", "--log-level", "warn",
			"--dapr-listen-addresses", "127.0.0.1", "--dapr-http-port", strconv.Itoa(ports[0]),
			"--dapr-grpc-port", strconv.Itoa(ports[1]), "--dapr-internal-grpc-port", strconv.Itoa(ports[2]),
			"--metrics-port", strconv.Itoa(ports[3]), "--enable-metrics=false",
			"--resources-path", filepath.Join(rdir, "components"))
	})
	if err != nil {
		return "", 0, nil, err
	}
	return "http://" + listen + "/v1.0/publish/bench/" + topic + "?metadata.rawPayload=true", pid, stop, nil
}

// startServer writes file (its path relative to a new directory under dir; "{dir}" in body
// is that directory) and starts the command that cmd returns for them, then waits until
// listen accepts a connection (30s at most). stop interrupts the process and waits for it.
func startServer(dir, file, body, listen string, cmd func(rdir, path string) *exec.Cmd) (pid int, stop func(), err error) {
	rdir, err := os.MkdirTemp(dir, "run-")
	if err != nil {
		return 0, nil, err
	}
	path := filepath.Join(rdir, file)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return 0, nil, err
	}
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(body, "{dir}", rdir)), 0o600); err != nil {
		return 0, nil, err
	}
	c := cmd(rdir, path)
	c.Dir = rdir
	var logs bytes.Buffer
	c.Stdout, c.Stderr = &logs, &logs
	dieWithParent(c) // never outlive the bench
	if err := c.Start(); err != nil {
		return 0, nil, err
	}
	stop = func() {
		_ = c.Process.Signal(os.Interrupt)
		_ = c.Wait()
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if conn, err := net.Dial("tcp", listen); err == nil {
			conn.Close()
			return c.Process.Pid, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return 0, nil, fmt.Errorf("%s did not listen on %s within 30s:\n%s", filepath.Base(c.Path), listen, tail(logs.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close() // held until all are picked, so that none repeats
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func createTopics(brokers []string, topics ...string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(cl).CreateTopics(ctx, partitions, 1, nil, topics...)
	if err != nil {
		return err
	}
	for _, r := range resp {
		if r.Err != nil && !strings.Contains(r.Err.Error(), "TOPIC_ALREADY_EXISTS") {
			return fmt.Errorf("create topic %s: %w", r.Topic, r.Err)
		}
	}
	return nil
}

func deleteTopic(brokers []string, topic string) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = kadm.NewClient(cl).DeleteTopics(ctx, topic)
}

// publishFlags are the flags of -scenario publish.
type publishFlags struct{ kafka *string }

func publishFlagSet() publishFlags {
	return publishFlags{kafka: flag.String("kafka", os.Getenv("MQSIDECAR_E2E_KAFKA"), "-scenario publish: a real Kafka (host:port) to measure beside kfake; default $MQSIDECAR_E2E_KAFKA")}
}
